//! Client messages through the core: what a message may change in the
//! session, whether it needs a server, then routing it once (through the
//! prepared-statement tracker or as it is) into the server's buffer with
//! the replies it owes.

use bytes::BytesMut;

use super::Core;
use crate::config::PoolMode;
use crate::prepared::{Flags, Hook, Outbox, Registry, Routed};
use crate::protocol::encode::{write_error, Severity};
use crate::protocol::expect::{Reply, Req};
use crate::protocol::frontend::Message;
use crate::protocol::{encode, fe, Frame, SqlState};
use crate::server::ServerConn;
use crate::session::effects::{hint, message_effects};
use crate::session::{fatal, End};
use crate::sql::Effects;

/// What a client message needs before [`Core::carry`] can route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::session) enum Plan {
    /// Handled already (dropped up to a Sync, or refused): nothing to carry.
    Done,
    /// The client said goodbye.
    Terminate,
    /// Carry it now, with what its text may change in the session.
    Carry(Effects),
    /// Carry it once a server is held.
    NeedServer(Effects),
}

/// What the tracker made of a message.
enum Tracked {
    /// Not a message it tracks.
    No,
    /// It needs a server and none is held; nothing was changed.
    NeedServer,
    /// Routed, with what the tracker knows it may change (if it does).
    Routed(Option<Effects>),
}

/// What the session's surroundings tell the core about a message.
pub(in crate::session) struct Policy<'a> {
    /// The shared statement registry.
    pub registry: &'a Registry,
    /// The pool refuses state that cannot move (`session_state = "error"`);
    /// asked only for a message that would create such state.
    pub refuses_state: &'a dyn Fn() -> bool,
}

impl Core {
    /// Looks at a client message, read once ([`Message::read`]): dropped
    /// (a batch skipping to its Sync), refused, the end of the session, or
    /// to be carried, now or once a server is held. Nothing is routed yet.
    pub(in crate::session) fn plan(
        &mut self,
        msg: &Message<'_>,
        held: bool,
        policy: &Policy<'_>,
    ) -> Result<Plan, End> {
        match msg {
            Message::Terminate => return Ok(Plan::Terminate),
            Message::Password => {
                let msg = "unexpected password message after login";
                return Err(fatal(SqlState::PROTOCOL_VIOLATION, msg));
            }
            Message::Sync => {}
            _ if self.skip_to_sync => return Ok(Plan::Done),
            _ => {}
        }
        self.skip_to_sync = false;
        let effects = message_effects(msg);
        if effects.pins
            && self.mode == PoolMode::Transaction
            && !self.maps_sql_prepare(msg)
            && (policy.refuses_state)()
        {
            self.refuse_session_state(msg);
            return Ok(Plan::Done);
        }
        if held || !self.needs_server(msg, policy.registry) {
            Ok(Plan::Carry(effects))
        } else {
            Ok(Plan::NeedServer(effects))
        }
    }

    /// Whether the next client message (`next`, whole and raw) must wait
    /// for the server's replies before it is even read: a DEALLOCATE ALL or
    /// DISCARD ALL of a client whose statements are tracked goes to the
    /// server only with nothing owed before it (a ROLLBACK ahead of it
    /// decides whether the server runs it), and nothing goes after it until
    /// it is answered (a statement prepared again behind it must be sent to
    /// the server again). Pipelining clients wait one round trip there;
    /// nobody else does. The shell reads no more from the client meanwhile.
    pub(in crate::session) fn waits(&self, next: &[u8]) -> bool {
        self.drop_in_flight || (next.first() == Some(&fe::QUERY) && self.waits_to_drop(next))
    }

    /// [`Core::waits`] for a Query. Not inlined: every message asks.
    #[inline(never)]
    fn waits_to_drop(&self, query: &[u8]) -> bool {
        use crate::prepared::messages::{names_statements, sql_effect, SqlEffect};
        // (Not inside a batch, whose replies come only at its Sync or a
        // Flush, nor inside a COPY: waiting there would wait forever.)
        if self.expect.is_empty()
            || self.batch_open()
            || self.expect.in_copy_in()
            || self.stmts.is_none()
        {
            return false;
        }
        let text = query.get(5..).and_then(crate::protocol::frame::cstr);
        text.is_some_and(|(sql, _)| {
            names_statements(sql) && matches!(sql_effect(sql), SqlEffect::DropAll { .. })
        })
    }

    /// Whether a message needs a server when none is held: what the
    /// tracker can answer itself (a Parse some server has accepted, a
    /// Close, a statement this client may not reach) and a Sync or Flush
    /// with nothing outstanding do not.
    fn needs_server(&self, msg: &Message<'_>, registry: &Registry) -> bool {
        let tracked = self
            .stmts
            .as_ref()
            .and_then(|t| t.needs_server(msg, registry, self.tx));
        tracked.unwrap_or(!matches!(msg, Message::Sync | Message::Flush))
    }

    /// Routes a planned message: into the server's buffer with the replies
    /// it owes, or answered here. `Ok(false)` when it turned out to need a
    /// server after all (nothing was changed: hold one and carry again).
    pub(in crate::session) fn carry(
        &mut self,
        msg: &Message<'_>,
        frame: &Frame,
        effects: Effects,
        mut server: Option<&mut ServerConn>,
        registry: &Registry,
    ) -> Result<bool, End> {
        // What the tracker knows of a statement beats what its text says
        // (an EXECUTE of a known statement, a mapped PREPARE), except that
        // a SQL EXECUTE passes `set_config($n, ...)` its name as an
        // expression pgmux does not evaluate.
        let known = match self.route_tracked(msg, frame, server.as_deref_mut(), registry)? {
            Tracked::NeedServer => return Ok(false),
            Tracked::Routed(known) => known,
            Tracked::No => {
                match msg {
                    // With no server held nothing is outstanding: answer it here.
                    Message::Sync if server.is_none() => {
                        encode::ready_for_query(&mut self.cout, self.tx)
                    }
                    Message::Flush if server.is_none() => {}
                    _ if server.is_none() => return Ok(false),
                    _ => self.forward(frame, Hook::None, server.as_deref_mut()),
                }
                None
            }
        };
        // Names come from the text even when the tracker answers the
        // Parse itself, and from the Binds of a client that prepared
        // `set_config($n, ...)`.
        let is_bind = matches!(msg, Message::Bind(_));
        if self.mode == PoolMode::Transaction && (effects.settings || (is_bind && self.scan_binds))
        {
            self.watch_setting_names(msg, effects);
        }
        let mut effects = match known {
            Some(mut known) => {
                if matches!(msg, Message::Query(_)) && known.param_settings {
                    known.unnamed_settings = true;
                }
                known
            }
            None => effects,
        };
        // The unnamed statement runs what its Parse said, also when it is
        // bound again in a later transaction.
        match msg {
            Message::Parse(p) => {
                if p.name.is_empty() {
                    self.unnamed_effects = effects;
                }
                // Giving startup values back runs a query, which would
                // drop the client's unnamed statement between its Parse
                // and its use (psql's \gdesc: Parse and Sync, then
                // Describe): it waits for the statement to run.
                effects.resets = false;
            }
            Message::Bind(b) if b.statement.is_empty() && known.is_none() => {
                effects |= self.unnamed_effects;
            }
            _ => {}
        }
        if effects.any() {
            self.note_effects(msg, effects, server);
        }
        Ok(true)
    }

    /// Lets the prepared-statement tracker route a message; the outbox's
    /// requests are carried out when it is done.
    fn route_tracked(
        &mut self,
        msg: &Message<'_>,
        frame: &Frame,
        mut server: Option<&mut ServerConn>,
        registry: &Registry,
    ) -> Result<Tracked, End> {
        let Some(tracker) = self.stmts.as_mut() else {
            return Ok(Tracked::No);
        };
        let mut out = Outbox::new(&mut self.sout, &mut self.routed);
        out.owed = !self.expect.is_empty();
        let statements = server.as_deref_mut().map(|s| &mut s.statements);
        let routed = tracker
            .route(msg, frame, statements, registry, self.tx, &mut out)
            .map_err(|e| fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))?;
        let flags = out.flags;
        Ok(match routed {
            Routed::Untracked => Tracked::No,
            Routed::NeedServer => Tracked::NeedServer,
            Routed::Done => {
                self.carry_out(frame, flags, server);
                Tracked::Routed(flags.effects)
            }
        })
    }

    /// Carries out what the tracker routed: the client's own message if it
    /// goes on, the replies owed in request order, and the flags.
    fn carry_out(&mut self, frame: &Frame, flags: Flags, mut server: Option<&mut ServerConn>) {
        if flags.forward {
            self.sout.extend_from_slice(frame.raw());
        }
        let mut routed = std::mem::take(&mut self.routed);
        for (req, reply, hook) in routed.drain(..) {
            // (A server skipping to a Sync skips it too: no answer comes,
            // and the undo at the push clears this again.)
            self.drop_in_flight |= matches!(hook, Hook::DropAll);
            self.send(req, reply, hook, server.as_deref_mut());
        }
        self.routed = routed;
        self.skip_to_sync |= flags.skip_to_sync;
    }

    /// Queues a client message for the server and notes the reply it owes.
    fn forward(&mut self, frame: &Frame, hook: Hook, server: Option<&mut ServerConn>) {
        // (Any other message sent during COPY FROM STDIN fails it, and
        // PostgreSQL then ends the session: its reply is owed until the
        // server goes, as pgmux cannot tell whether the server read it
        // before or after the COPY failed on its own.)
        if matches!(frame.tag(), fe::COPY_DONE | fe::COPY_FAIL) {
            self.expect.end_copy_in();
        }
        if let Some(req) = Req::from_tag(frame.tag()) {
            self.send(req, Reply::Forward, hook, server);
        }
        self.sout.extend_from_slice(frame.raw());
    }

    /// Follows the custom setting names a message may set: from its text
    /// (`effects` as the text reads), or from a Bind's values once the
    /// client has prepared `set_config($n, ...)` (any Bind may run it).
    /// Past what pgmux follows, the transaction counts as setting names it
    /// cannot read back.
    fn watch_setting_names(&mut self, msg: &Message<'_>, effects: Effects) {
        self.scan_binds |= effects.param_settings;
        let names = match msg {
            // Any Bind may run it, in this transaction or a later one.
            Message::Bind(b) => {
                self.touched.settings = true;
                b.values()
                    .and_then(|v| crate::sql::bound_setting_names(v.into_iter().flatten()))
            }
            _ => msg.text().and_then(crate::sql::setting_names),
        };
        let followed = names.is_some_and(|n| n.is_empty() || self.params.watch(n));
        if !followed {
            self.touched.unnamed_settings = true;
        }
    }

    /// Notes a client message that may change session state: the server
    /// held when it runs is read back (and its identity restored) before it
    /// is lent again. A Parse that may change identity and stays on the
    /// server under a name anyone may execute (statement tracking off)
    /// taints that server for good.
    fn note_effects(
        &mut self,
        msg: &Message<'_>,
        effects: Effects,
        server: Option<&mut ServerConn>,
    ) {
        self.touched |= effects;
        if effects.pins && self.mode == PoolMode::Transaction {
            self.pin_hint = msg.text().map(hint);
        }
        let Some(s) = server else { return };
        if matches!(msg, Message::Parse(_)) && self.stmts.is_none() {
            s.sticky_effects |= effects;
            if effects.identity {
                s.mark_identity_sticky();
            }
        }
        // A CREATE may have made or replaced a function: the setting names
        // functions mention are asked again.
        if effects.may_pin {
            s.code_setting_names = None;
        }
    }

    /// Whether the prepared-statement tracker maps this Query's SQL-level
    /// `PREPARE` (so it creates no state that pins).
    fn maps_sql_prepare(&self, msg: &Message<'_>) -> bool {
        use crate::prepared::messages::{sql_prepared, SqlPrepared};
        match msg {
            Message::Query(sql) if self.stmts.is_some() => {
                matches!(sql_prepared(sql), Some(SqlPrepared::Prepare { .. }))
            }
            _ => false,
        }
    }

    /// Answers a statement that would create such state with 0A000 instead
    /// of running it. A Query gets its ReadyForQuery (the transaction status
    /// is unchanged: the server never saw it); a Parse ends its batch.
    fn refuse_session_state(&mut self, msg: &Message<'_>) {
        let text = format!(
            "\"{}\" keeps state on its server, which this pool does not allow in transaction mode (session_state = \"error\")",
            msg.text().map(hint).unwrap_or_default()
        );
        let mut reply = BytesMut::new();
        write_error(
            &mut reply,
            Severity::Error,
            SqlState::FEATURE_NOT_SUPPORTED.0,
            &text,
        );
        if matches!(msg, Message::Query(_)) {
            encode::ready_for_query(&mut reply, self.tx);
            self.push(
                Req::Query,
                Reply::Synthetic(reply.freeze()),
                Hook::None,
                None,
            );
        } else {
            self.push(
                Req::Parse,
                Reply::Synthetic(reply.freeze()),
                Hook::None,
                None,
            );
            self.skip_to_sync = true;
        }
    }
}
