"""schemathesis, run over /api/openapi.json against a live API, finds no 5xx and no answer that
breaks its own schema."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from sinks.sites import upsert_site
from streams.sites import Site
from tests.conftest import API_KEY

ST = Path(sys.executable).with_name("st")


async def test_openapi_document_is_served_without_key(stack):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.api_url}/api/openapi.json") as response:
            document = await response.json()

    assert response.status == 200
    assert document["openapi"] == "3.1.0"
    assert sorted(document["paths"]) == ["/api/audience", "/api/events", "/api/live", "/api/network", "/api/overview",
                                         "/api/pages", "/api/sites", "/api/timeseries", "/api/traffic"]


@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None, reason="schemathesis is not installed")
async def test_schemathesis_finds_no_server_error(stack, db, tmp_path):
    # The served document accepts any site; this copy pins it to one that exists, so generated
    # requests reach the reports instead of stopping at 404.
    await upsert_site(db, Site("example.com", "UTC"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.api_url}/api/openapi.json") as response:
            document = await response.json()
    for path_item in document["paths"].values():
        for parameter in path_item["get"].get("parameters", []):
            if parameter["name"] == "site":
                parameter["schema"] = {"type": "string", "enum": ["example.com"]}
    schema_path = tmp_path / "openapi.json"
    schema_path.write_text(json.dumps(document))
    command = [str(ST if ST.exists() else shutil.which("st")), "run", str(schema_path), "--url", stack.api_url,
               "--header", f"Authorization: Bearer {API_KEY}",
               "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                           "content_type_conformance",
               "--max-examples", "30", "--phases", "examples,coverage,fuzzing",
               "--request-timeout", "20", "--generation-deterministic"]

    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "404 responses" not in result.stdout
