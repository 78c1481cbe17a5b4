"""The search page in a real browser: Debian's Chromium driven by Playwright.

The page is the first thing a radiologist or an operator sees, so it is tested the way they
use it: choose a file in the page's file input, wait for the grid of neighbours, check the
query found itself at distance 0, and keep a screenshot to look at.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from services.search import create_app
from shared.hashing.inference import BatchEncoder
from shared.pipeline.wiring import Runtime
from testbed.servers import require_binary
from tests.services.search.conftest import World, png_bytes, served

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Debian's Chromium (never a browser Playwright downloads), headless and offline."""
    executable = require_binary("chromium", Path("/usr/bin"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_in_the_page_shows_the_query_first_at_distance_0(
        chromium: Browser, world: World, encoder: BatchEncoder) -> None:
    uid, pixels = next(iter(world.pictures.items()))
    query = Path(tempfile.mkdtemp(prefix="medhash-page-")) / "query.png"
    query.write_bytes(png_bytes(pixels))
    screenshot = Path(tempfile.gettempdir()) / "medhash-search-page.png"

    with served(create_app(world.pipeline.runtime, encoder=encoder)) as base_url:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        outside: list[str] = []
        page.on("request", lambda request: outside.append(request.url)
                if not request.url.startswith((base_url, "data:", "blob:")) else None)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base_url + "/")
        # locators and expect(), not wait_for_function: the page's CSP forbids eval
        expect(page.locator("#stats")).to_contain_text("indexed")
        page.set_input_files("#file-input", str(query))
        cards = page.locator("#results li.card")
        expect(cards).to_have_count(12)
        for image in page.locator("#results img").all():  # every thumbnail has loaded
            expect(image).to_have_js_property("naturalWidth", 128)
        first = cards.first
        assert first.get_attribute("data-uid") == uid
        assert first.get_attribute("data-distance") == "0"
        assert first.locator(".distance").inner_text() == "distance 0"
        assert first.locator(".modality").inner_text() == "XC"
        assert "12 neighbours of query.png" in page.locator("#status").inner_text()
        assert (page.locator("#query-thumb").get_attribute("src") or "").startswith("data:image/png")
        alt_texts = [image.get_attribute("alt") for image in page.locator("#results img").all()]
        assert all(alt and "distance" in alt for alt in alt_texts)

        page.screenshot(path=str(screenshot), full_page=True)

        first.locator("button.again").click()  # search again with the result's stored codes
        expect(page.locator("#status")).to_contain_text("neighbours of instance")
        assert cards.first.get_attribute("data-uid") == uid
        page.close()

    assert not outside, f"the page loaded something from outside the service: {outside}"
    assert not errors, errors
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_the_page_filters_and_links_each_result_to_the_viewer(
        chromium: Browser, world: World, encoder: BatchEncoder) -> None:
    settings = world.pipeline.runtime.settings.model_copy(
        update={"viewer_url": "https://viewer.example.org/viewer?StudyInstanceUIDs={study}"})
    runtime = Runtime.from_settings(settings)  # a second process's view of the same data
    query = Path(tempfile.mkdtemp(prefix="medhash-page-")) / "query.png"
    query.write_bytes(png_bytes(next(iter(world.pictures.values()))))
    try:
        with served(create_app(runtime, encoder=encoder, expose_patient_data=True)) as base_url:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base_url + "/")
            page.locator("#filter-details summary").click()
            page.fill("#modality-input", "MR")
            page.fill("#body-part-input", "HEAD")
            page.set_input_files("#file-input", str(query))
            cards = page.locator("#results li.card")
            expect(cards).to_have_count(5)  # the five MR pictures of the head, no other
            for card in cards.all():
                assert card.locator(".modality").inner_text() == "MR"
                assert card.locator(".body-part").inner_text() == "HEAD"
                viewer = card.locator("a.viewer")
                expect(viewer).to_be_visible()
                assert (viewer.get_attribute("href") or "").startswith(
                    "https://viewer.example.org/viewer?StudyInstanceUIDs=")
                wado = card.locator("a.wado").get_attribute("href") or ""
                assert f"{base_url}/dicomweb/studies/" in wado
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "medhash-search-filters.png"),
                            full_page=True)
            page.close()
    finally:
        runtime.close()
