"""The sites table against the Redis directory: rows that share a host, as older versions of
`weir site add` stored them, concurrent adds that claim one host, hosts that leave the
directory, and removing aliases."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import aiohttp
import asyncpg
import orjson
import pytest

from sinks.guard import run_guard
from sinks.sites import InvalidSite, add_site, load_sites, publish_sites, remove_alias
from streams.keys import SITES_HASH
from streams.sites import Site, SiteDirectory
from tests.conftest import wait_until_processed

# Stored as an older `weir site add` allowed: zz-hijack.example lists the domain of
# victim.example as an alias, and a.example, added first, shares www.shared.example with it.
LEGACY_ROWS = [
    ("a.example", ["www.shared.example"], datetime(2024, 1, 1, tzinfo=timezone.utc)),
    ("victim.example", [], datetime(2024, 2, 1, tzinfo=timezone.utc)),
    ("zz-hijack.example", ["victim.example", "www.shared.example", "www.zz-hijack.example"],
     datetime(2025, 1, 1, tzinfo=timezone.utc)),
]
EXPECTED_DIRECTORY = {
    "a.example": "a.example",
    "www.shared.example": "a.example",
    "victim.example": "victim.example",
    "zz-hijack.example": "zz-hijack.example",
    "www.zz-hijack.example": "zz-hijack.example",
}
EXPECTED_WARNINGS = [
    "alias is another site's domain; the domain keeps it host=victim.example site=victim.example "
    "alias_of=zz-hijack.example",
    "alias is listed by two sites; the first keeps it host=www.shared.example site=a.example "
    "alias_of=zz-hijack.example",
]


async def store_legacy_rows(db: asyncpg.Connection) -> None:
    await run_guard(db, apply=True)
    await db.executemany("INSERT INTO sites (domain, timezone, aliases, created_at) VALUES ($1, 'UTC', $2, $3)",
                         LEGACY_ROWS)


async def directory_hash(redis) -> dict[str, str]:
    return {host.decode(): orjson.loads(record)["domain"] for host, record in (await redis.hgetall(SITES_HASH)).items()}


async def test_publish_gives_domain_precedence_over_alias(db, redis, caplog):
    await store_legacy_rows(db)
    directory = SiteDirectory(redis)

    with caplog.at_level(logging.WARNING, logger="streams.sites"):
        published = await publish_sites(db, directory)

    assert published == 3
    assert await directory_hash(redis) == EXPECTED_DIRECTORY
    assert (await directory.lookup("victim.example")).domain == "victim.example"
    assert (await directory.lookup("https://www.shared.example/")).domain == "a.example"
    assert [r.getMessage() for r in caplog.records if r.name == "streams.sites"] == EXPECTED_WARNINGS


async def test_publish_overwrites_hijacked_entry(db, redis):
    await store_legacy_rows(db)
    # What the older publish left in Redis: the later site in domain order took both shared hosts.
    hijack = orjson.dumps({"domain": "zz-hijack.example", "timezone": "UTC", "aliases": []})
    await redis.hset(SITES_HASH, mapping={"victim.example": hijack, "www.shared.example": hijack})

    await publish_sites(db, SiteDirectory(redis))

    assert await directory_hash(redis) == EXPECTED_DIRECTORY


async def test_collector_stores_event_under_domain(stack, db, redis):
    await store_legacy_rows(db)
    await publish_sites(db, SiteDirectory(redis))

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.collector_url}/collect",
                             json={"site": "victim.example", "url": "https://victim.example/"}) as response:
            assert response.status == 202, await response.text()
    await wait_until_processed(redis)

    assert await db.fetch("SELECT site FROM raw_events") == [("victim.example",)]


async def test_add_site_updates_legacy_conflicting_domain(db):
    # victim.example is already a site, so adding it again only changes its time zone. The
    # conflicting alias belongs to the row of zz-hijack.example, which an operator must fix.
    await store_legacy_rows(db)

    await add_site(db, Site("victim.example", "Europe/Berlin"))

    sites = {site.domain: site for site in await load_sites(db)}
    assert sites["victim.example"] == Site("victim.example", "Europe/Berlin", ())


async def test_add_site_waits_for_concurrent_add(db, database_url):
    await run_guard(db, apply=True)
    other = await asyncpg.connect(database_url)
    try:
        # `other` holds the lock that add_site takes while it writes a site with alias www.x.example.
        transaction = other.transaction()
        await transaction.start()
        await other.execute("LOCK TABLE sites IN SHARE ROW EXCLUSIVE MODE")
        await other.execute("INSERT INTO sites (domain, aliases) VALUES ('x.example', '{www.x.example}')")
        adding = asyncio.create_task(add_site(db, Site("y.example", "UTC", ("www.x.example",))))
        await asyncio.sleep(0.5)
        waited = not adding.done()
        await transaction.commit()

        with pytest.raises(InvalidSite) as rejected:
            await adding
    finally:
        await other.close()

    assert waited
    assert str(rejected.value) == ("alias 'www.x.example' is already an alias of site 'x.example': a host belongs "
                                   "to one site only, so drop --alias www.x.example, or first run "
                                   "`weir site remove-alias x.example www.x.example`")
    assert [site.domain for site in await load_sites(db)] == ["x.example"]


async def test_publish_removes_stale_hosts(db, redis, caplog):
    await store_legacy_rows(db)
    record = orjson.dumps({"domain": "a.example", "timezone": "UTC", "aliases": []})
    # Keys that an older version wrote (`http`, `https`), and an alias deleted from the table
    # with SQL after it had been published.
    await redis.hset(SITES_HASH, mapping={"http": record, "https": record, "old.a.example": record})

    with caplog.at_level(logging.INFO, logger="sinks.sites"):
        await publish_sites(db, SiteDirectory(redis))

    assert await directory_hash(redis) == EXPECTED_DIRECTORY
    assert [r.getMessage() for r in caplog.records if r.name == "sinks.sites"] == [
        "site directory published sites=3 hosts_removed=3"]


async def test_publish_keeps_sites_it_does_not_list(db, redis):
    # A processor started against an empty database publishes no site, and collectors that share
    # its Redis must still accept the sites of the right database.
    await run_guard(db, apply=True)
    await SiteDirectory(redis).publish([Site("a.example", "UTC", ("www.a.example",))])

    published = await publish_sites(db, SiteDirectory(redis))
    removed = await SiteDirectory(redis).publish([Site("b.example", "UTC")])

    assert published == 0
    assert removed == []
    assert await directory_hash(redis) == {"a.example": "a.example", "www.a.example": "a.example",
                                           "b.example": "b.example"}


async def test_publish_keeps_live_site_visible(redis):
    # Each publish swaps the alias of a.example. A read between the two steps of a non-atomic
    # replacement (delete, then write) would find a.example missing.
    layouts = [[Site("a.example", "UTC", ("www.a.example",))], [Site("a.example", "UTC", ("shop.a.example",))]]
    directory = SiteDirectory(redis)
    publishing = True
    reads_without_site = 0
    reads = 0

    async def read_until_done() -> None:
        nonlocal reads, reads_without_site
        while publishing:
            hosts = await redis.hkeys(SITES_HASH)
            reads += 1
            reads_without_site += b"a.example" not in hosts

    await directory.publish(layouts[0])
    reading = asyncio.create_task(read_until_done())
    try:
        for round_number in range(200):
            await directory.publish(layouts[round_number % 2])
    finally:
        publishing = False
        await reading

    assert reads > 0
    assert reads_without_site == 0
    assert await directory_hash(redis) == {"a.example": "a.example", "shop.a.example": "a.example"}


async def test_publish_waits_for_concurrent_add(db, redis, database_url):
    # Without waiting, a publish that read the table before the add committed would write its
    # older copy after the add's own publish and delete new.example from the directory.
    await run_guard(db, apply=True)
    await add_site(db, Site("a.example", "UTC"))
    other = await asyncpg.connect(database_url)
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute("LOCK TABLE sites IN SHARE ROW EXCLUSIVE MODE")
        await other.execute("INSERT INTO sites (domain, aliases) VALUES ('new.example', '{www.new.example}')")
        publishing = asyncio.create_task(publish_sites(db, SiteDirectory(redis)))
        await asyncio.sleep(0.5)
        waited = not publishing.done()
        await transaction.commit()
        published = await publishing
    finally:
        await other.close()

    assert waited
    assert published == 2
    assert await directory_hash(redis) == {"a.example": "a.example", "new.example": "new.example",
                                           "www.new.example": "new.example"}


async def test_remove_alias_removes_every_spelling(db, redis):
    # Older versions stored aliases as typed, so one host may be in a row more than once.
    await run_guard(db, apply=True)
    await db.execute("INSERT INTO sites (domain, aliases) VALUES "
                     "('a.example', '{WWW.A.example,shop.a.example,www.a.example.}')")

    stored = await remove_alias(db, "a.example", "www.a.example")
    await publish_sites(db, SiteDirectory(redis))

    assert stored == Site("a.example", "UTC", ("shop.a.example",))
    assert await db.fetchval("SELECT aliases FROM sites WHERE domain = 'a.example'") == ["shop.a.example"]
    assert await directory_hash(redis) == {"a.example": "a.example", "shop.a.example": "a.example"}


async def test_remove_alias_frees_legacy_hijacked_domain(db, redis, caplog):
    await store_legacy_rows(db)

    stored = await remove_alias(db, "zz-hijack.example", "victim.example")
    with caplog.at_level(logging.WARNING, logger="streams.sites"):
        await publish_sites(db, SiteDirectory(redis))

    assert stored == Site("zz-hijack.example", "UTC", ("www.shared.example", "www.zz-hijack.example"))
    assert [r.getMessage() for r in caplog.records if r.name == "streams.sites"] == EXPECTED_WARNINGS[1:]
    assert await directory_hash(redis) == EXPECTED_DIRECTORY
