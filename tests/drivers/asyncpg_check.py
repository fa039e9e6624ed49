"""asyncpg through pgmux: prepared statements, its implicit statement cache
(Describe + Flush on prepare), and transactions, from many connections at once.
Usage: asyncpg_check.py DSN CONNECTIONS"""
import asyncio
import sys

import asyncpg


async def worker(dsn: str, i: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        stmt = await conn.prepare("SELECT $1::int * 2 AS v")
        for j in range(10):
            assert await stmt.fetchval(i + j) == (i + j) * 2
            rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", j + 1)
            assert [r["g"] for r in rows] == list(range(1, j + 2))
            async with conn.transaction():
                await conn.execute("INSERT INTO items (worker, n) VALUES ($1, $2)", i, j)
                n = await conn.fetchval("SELECT count(*) FROM items WHERE worker = $1", i)
                assert n == j + 1, (n, j)
    finally:
        await conn.close()


async def main() -> None:
    dsn, count = sys.argv[1], int(sys.argv[2])
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS items (worker int, n int)")
    await asyncio.wait_for(asyncio.gather(*(worker(dsn, i) for i in range(count))), 120)
    total = await conn.fetchval("SELECT count(*) FROM items")
    assert total == count * 10, total
    await conn.close()
    print(f"asyncpg ok: {count} connections, {total} rows")


asyncio.run(main())
