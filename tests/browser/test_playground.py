"""The playground end to end in headless Chromium (Debian's ``chromium``) driven by Playwright.

A live gateway (with the playground router) serves the page; a real worker takes jobs (and trains on ``tiny``)
in a background thread. Through the page only: submit txt2img and see the image in the gallery with its seed;
copy the request as curl and replay it; use the result as input, paint a mask and inpaint; cancel a long job;
train a LoRA on a folder of four images, watch its loss curve and validation images, and generate with it.
The run saves a screenshot: to ``docs/images/playground.png`` with ``SDSERVE_WRITE_EXAMPLES=1`` (the README
shows it), else to a temporary folder (a test run does not change the checkout).

Skipped (with the reason) where ``/usr/bin/chromium`` or Playwright is missing. To have them:
``apt-get install -y chromium`` and ``pip install playwright`` (Playwright's own browser download is
not needed: the Debian build is used).
"""

from __future__ import annotations

import io
import os
import shlex
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from sdserve.settings import Settings
from tests.browser.test_playground_route import with_playground
from tests.conftest import LiveServer, background_worker
from train.dataset import held_out_scenes, render

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "playground.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "pk-playground-test"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install playwright)")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings, with trainings on ``tiny`` (quick on a CPU)."""
    return settings.model_copy(update={"training_models": ["tiny"]})


@pytest.fixture
def site(settings: Settings, redis_client: redis.Redis, pipelines: Any) -> Iterator[str]:
    from app.main import create_app

    for model in settings.worker_models:  # loaded here, not in the worker's thread while the browser starts
        pipelines.load(model)
    with (
        LiveServer(with_playground(create_app(settings))) as server,
        background_worker(settings, redis_client, pipelines),
    ):
        yield server.url


@pytest.fixture
def page(site: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site)
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def until(page: Any, predicate: str, arg: Any = None, timeout: float = 60.0) -> None:
    """Poll a JS function in the page until it returns true. (``page.wait_for_function`` compiles its
    predicate with eval inside the page, which the playground's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        page.wait_for_timeout(100)


def wait_for_result(page: Any, job: Any, width: int, height: int) -> Any:
    """The job card once it succeeded and its first image has loaded at the expected size."""
    until(
        page,
        """([card, w, h]) => {
            const image = card.querySelector("img.result-image");
            return card.dataset.status === "succeeded" && !!image && image.complete
                && image.naturalWidth === w && image.naturalHeight === h;
        }""",
        [job.element_handle(), width, height],
        timeout=90,
    )
    return job


def submit(page: Any) -> Any:
    """Click Generate; returns the new job's card (a locator that stays on it)."""
    cards = page.locator(".job").count()
    page.click("#submit")
    until(page, "n => document.querySelectorAll('.job').length > n", cards)
    job_id = page.locator(".job").first.get_attribute("data-job-id")
    return page.locator(f".job[data-job-id='{job_id}']")


def page_errors(page: Any) -> list[str]:
    """The page's own errors, collected as they happen."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(  # a refused request is logged by the browser itself; anything else is the page's fault
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    return errors


def test_playground_generates_inpaints_and_cancels(page: Any, site: str) -> None:
    errors = page_errors(page)
    api_calls: list[tuple[str, str | None]] = []
    page.on(
        "request",
        lambda r: (
            api_calls.append((r.url, r.headers.get("authorization")))
            if r.resource_type == "fetch" and "/v1/files/" not in r.url
            else None
        ),
    )

    page.goto(site + "/")
    page.wait_for_selector("body[data-catalog='ready']")
    # The API key is kept in localStorage and sent as a bearer token.
    assert api_calls and all(key is None for _, key in api_calls)  # no key yet
    api_calls.clear()
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("body[data-catalog='ready']")
    assert page.evaluate("localStorage.getItem('sdserve.apiKey')") == API_KEY
    page.reload()
    page.wait_for_selector("body[data-catalog='ready']")
    assert page.input_value("#api-key") == API_KEY

    # The catalog fills the choices.
    assert page.input_value("#model") == "tiny"
    assert "tiny-sdxl" in page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    schedulers = page.eval_on_selector_all("#scheduler option", "os => os.map(o => o.value)")
    assert {"", "euler", "dpmpp_2m_karras"} <= set(schedulers)
    assert page.eval_on_selector_all("#style option", "os => os.length") > 1
    assert page.locator("#loras .lora", has_text="tiny-detail").count() == 1

    # A refused request shows the problem and marks the field.
    page.fill("#prompt", "a lighthouse at dusk")
    page.fill("#width", "250")
    page.click("#submit")
    page.wait_for_selector("#problem:not([hidden])")
    assert "body.width" in page.inner_text("#problem")
    assert "invalid" in (page.get_attribute("#width", "class") or "")

    # txt2img: the image appears in the gallery with its seed; previews came over SSE.
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "6")
    page.fill("#seed", "7")
    first = submit(page)
    wait_for_result(page, first, 64, 64)
    assert first.get_attribute("data-task") == "txt2img"
    assert page.is_hidden("#problem")
    assert first.locator(".seed").inner_text() == "seed 7"
    assert first.locator(".dims").inner_text() == "64×64"
    assert int(first.get_attribute("data-previews") or 0) >= 1  # preview every 5 steps
    assert first.get_attribute("data-step") == "6"

    # Copy as curl: the exact request, which replays as is.
    first.locator(".copy-curl").click()
    command = first.locator(".curl").inner_text()
    assert page.evaluate("navigator.clipboard.readText()") == command
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:4] == ["curl", "-X", "POST", f"{site}/v1/txt2img"]
    assert "Authorization: Bearer $SDSERVE_API_KEY" in words  # the key itself stays out of the snippet
    body = words[words.index("-d") + 1]
    replay = httpx.post(f"{site}/v1/txt2img", content=body, headers={"Content-Type": "application/json"})
    assert replay.status_code == 202, replay.text
    request = replay.json()["request"]
    assert (request["prompt"], request["width"], request["height"], request["steps"], request["seed"]) == (
        "a lighthouse at dusk", 64, 64, 6, 7,
    )  # fmt: skip
    httpx.post(f"{site}/v1/jobs/{replay.json()['id']}/cancel")

    # Choose a file: one the browser cannot read is refused; an image is uploaded (POST /v1/uploads).
    page.check("input[name='task'][value='img2img']")
    page.set_input_files("#image-file", files=[{"name": "a.png", "mimeType": "image/png", "buffer": b"not an image"}])
    page.wait_for_selector("#problem:not([hidden])")
    assert "not an image" in page.inner_text("#problem")
    png = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 40, 40)).save(png, format="PNG")
    page.set_input_files("#image-file", files=[{"name": "red.png", "mimeType": "image/png", "buffer": png.getvalue()}])
    until(page, "() => document.querySelector('#image-info').textContent.includes('uploaded as upl_')")
    upload_id = page.inner_text("#image-info").rsplit(" ", 1)[1]
    upload = httpx.get(f"{site}/v1/uploads/{upload_id}").json()
    assert (upload["kind"], upload["width"], upload["height"]) == ("image", 40, 24)
    assert page.is_hidden("#problem")

    # Use the result as input.
    first.locator(".use-input").click()
    until(page, "() => document.querySelector('#image-info').textContent.includes('uploaded as upl_')")
    assert page.is_checked("input[name='task'][value='img2img']")

    # Outpaint the same input by fixed margins.
    page.check("input[name='task'][value='outpaint']")
    page.fill("input[name='left']", "16")
    page.fill("input[name='right']", "8")
    outpainted = wait_for_result(page, submit(page), 88, 64)
    assert outpainted.get_attribute("data-task") == "outpaint"

    # Paint a mask and inpaint.
    page.check("input[name='task'][value='inpaint']")
    overlay = page.locator("#mask-overlay")
    box = overlay.bounding_box()
    assert box is not None and box["width"] > 200  # the 64 px image is shown large enough to paint on
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.7, steps=8)
    page.mouse.up()
    assert page.get_attribute("body", "data-mask-painted") == "true"
    page.fill("#prompt", "a yellow star")
    page.fill("#steps", "3")
    inpainted = submit(page)
    wait_for_result(page, inpainted, 64, 64)
    assert inpainted.get_attribute("data-task") == "inpaint"
    job_id = inpainted.get_attribute("data-job-id")
    job = httpx.get(f"{site}/v1/jobs/{job_id}").json()
    assert job["task"] == "inpaint" and job["status"] == "succeeded"
    assert job["request"]["image"].startswith("upl_") and job["request"]["mask"].startswith("upl_")
    mask = httpx.get(f"{site}/v1/uploads/{job['request']['mask']}").json()
    assert mask["kind"] == "mask" and (mask["width"], mask["height"]) == (64, 64)
    # White (painted) is repainted; far from the strokes the input stays as it was.
    before = picture(first.locator("img.result-image").get_attribute("src"))
    after = picture(job["images"][0]["url"])
    for corner in ((0, 0), (63, 0), (0, 63), (63, 63)):
        assert after.getpixel(corner) == before.getpixel(corner), corner
    assert after.getpixel((32, 26)) != before.getpixel((32, 26))  # on the first stroke

    page.screenshot(path=str(_screenshot_path()), full_page=True)

    # Cancel a long job from its card.
    page.check("input[name='task'][value='txt2img']")
    page.fill("#steps", "150")
    long_job = submit(page)
    long_job.locator(".cancel").click()
    until(page, "card => card.dataset.status === 'canceled'", long_job.element_handle())
    assert long_job.locator(".result-image").count() == 0

    assert errors == []
    assert api_calls and all(key == f"Bearer {API_KEY}" for _, key in api_calls), api_calls
    assert any(url.endswith("/events") for url, _ in api_calls)
    assert any(url.endswith("/v1/uploads") for url, _ in api_calls)


def test_playground_trains_a_lora_and_generates_with_it(page: Any, site: str, tmp_path: Path) -> None:
    errors = page_errors(page)
    folder = tmp_path / "shapes"
    (folder / "notes").mkdir(parents=True)
    for i, scene in enumerate(held_out_scenes(0, 4)):
        render(scene).save(folder / f"scene{i}.png")
    (folder / "scene0.txt").write_text("a photo of sks, a shape")
    (folder / "scene2.txt").write_text("sks again")
    (folder / "notes" / "skip.png").write_bytes(b"a subfolder's file: not sent")
    page.goto(site + "/")
    page.wait_for_selector("body[data-catalog='ready']")
    assert page.input_value("#train-model") == "tiny"

    # Nothing picked: refused on the page, before any request.
    page.click("#train-submit")
    page.wait_for_selector("#train-problem:not([hidden])")
    assert "Choose a folder or files with images" in page.inner_text("#train-problem")

    # A folder: its four images and two captions (not its subfolder's file).
    page.set_input_files("#train-folder", str(folder))
    assert page.inner_text("#train-dataset") == "4 image(s), 2 caption(s)"
    assert page.is_hidden("#train-initializer")  # a LoRA has no initializer; textual inversion has
    page.select_option("#train-method", "textual_inversion")
    assert page.is_visible("#train-initializer") and page.is_hidden("#train-rank")
    page.select_option("#train-method", "lora")
    for selector, value in {
        "#train-name": "page-style", "#train-trigger": "sks", "#train-steps": "4", "#train-rank": "2",
        "#train-batch": "1", "#train-resolution": "64", "#train-lr": "0.001", "#train-validate": "a photo of sks",
        "#train-every": "2",
    }.items():  # fmt: skip
        page.fill(selector, value)
    page.click("#train-submit")
    until(page, "() => !!document.querySelector('.training')")
    card = page.locator(".training").first
    assert page.is_hidden("#train-problem")
    until(page, "card => card.dataset.status === 'succeeded'", card.element_handle(), timeout=120)

    # The loss curve (an inline SVG polyline) and the validation images of steps 2 and 4.
    assert int(card.get_attribute("data-points") or 0) >= 1
    points = (card.locator(".loss-line").get_attribute("points") or "").split()
    assert len(points) >= 2 and all(len(p.split(",")) == 2 for p in points), points
    assert card.locator(".loss-range").inner_text().startswith("loss ")
    assert card.get_attribute("data-validations") == "2"
    assert [s.inner_text() for s in card.locator(".validation-step").all()] == ["step 2", "step 4"]
    until(
        page,
        "card => [...card.querySelectorAll('.validation img')].every(i => i.complete && i.naturalWidth === 64)",
        card.element_handle(),
    )
    assert "page-style" in card.locator(".training-result").inner_text()
    assert card.locator(".cancel").is_hidden()
    training = httpx.get(f"{site}/v1/trainings/{card.get_attribute('data-training-id')}").json()
    assert training["status"] == "succeeded" and training["base_model"] == "tiny"
    assert training["request"]["hyperparameters"]["steps"] == 4 and training["request"]["hyperparameters"]["rank"] == 2
    assert httpx.get(f"{site}/v1/uploads/{training['request']['dataset']}").json()["images"] == 4

    # "Generate with it" fills the form: the model, the trigger word in the prompt, the new LoRA ticked.
    page.fill("#prompt", "")
    card.locator(".use-training").click()
    until(page, "() => document.querySelector('#prompt').value === 'a photo of sks'")
    assert page.input_value("#model") == "tiny"
    assert page.is_checked("#loras .lora input[value='page-style']")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "3")
    job = wait_for_result(page, submit(page), 64, 64)
    record = httpx.get(f"{site}/v1/jobs/{job.get_attribute('data-job-id')}").json()
    assert [lora["name"] for lora in record["request"]["loras"]] == ["page-style"]
    page.screenshot(path=str(_screenshot_path("playground-training.png")), full_page=True)
    assert errors == []


def picture(url: str | None) -> Image.Image:
    assert url
    response = httpx.get(url)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def _screenshot_path(name: str = SCREENSHOT.name) -> Path:
    folder = SCREENSHOT.parent if os.environ.get("SDSERVE_WRITE_EXAMPLES") == "1" else Path(tempfile.mkdtemp())
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
