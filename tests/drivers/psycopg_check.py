"""psycopg 3 through pgmux with prepare_threshold=0 (every query a named
prepared statement), inside and outside transactions, from many connections.
Usage: psycopg_check.py DSN CONNECTIONS"""
import asyncio
import sys

import psycopg


async def worker(dsn: str, i: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, prepare_threshold=0, autocommit=True) as conn:
        for j in range(10):
            cur = await conn.execute("SELECT %s::int * 2", (i + j,))
            assert (await cur.fetchone())[0] == (i + j) * 2
            cur = await conn.execute("SELECT %s::text || '!'", (f"w{i}",))
            assert (await cur.fetchone())[0] == f"w{i}!"
            async with conn.transaction():
                await conn.execute("INSERT INTO pitems (worker, n) VALUES (%s, %s)", (i, j))
                cur = await conn.execute("SELECT count(*) FROM pitems WHERE worker = %s", (i,))
                assert (await cur.fetchone())[0] == j + 1


async def main() -> None:
    dsn, count = sys.argv[1], int(sys.argv[2])
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS pitems (worker int, n int)")
        await asyncio.wait_for(asyncio.gather(*(worker(dsn, i) for i in range(count))), 120)
        cur = await conn.execute("SELECT count(*) FROM pitems")
        total = (await cur.fetchone())[0]
        assert total == count * 10, total
    print(f"psycopg ok: {count} connections, {total} rows")


asyncio.run(main())
