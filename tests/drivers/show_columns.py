"""Prints, as JSON, the columns (name, type OID) of each admin SHOW command
and the first column of its rows, for the admin console at the DSN given."""
import json
import sys

import psycopg

COMMANDS = sys.argv[2].split(",")

with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    out = {}
    for cmd in COMMANDS:
        try:
            cur = conn.execute("SHOW " + cmd, prepare=False)
            out[cmd] = {
                "columns": [[d.name, d.type_code] for d in cur.description],
                "keys": [str(r[0]) for r in cur.fetchall()],
            }
        except psycopg.Error as e:
            out[cmd] = {"error": str(e)}
    print(json.dumps(out))
