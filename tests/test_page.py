"""The page `elman serve` shows at `/`, driven in a real headless Chromium (Selenium with
Debian's `chromium` and `chromium-driver`): every panel typed into, uploaded to and clicked,
its answers checked against the REST API's answers for the same inputs, a screenshot of each
panel saved under the test's temporary folder."""

import io
import json
import shutil
import time
import urllib.request

import numpy as np
import pytest

from elman import page, serving
from rest_client import call, predict

WAIT_SECONDS = 60


def _chromium():
    """A headless Chromium driven by chromedriver, or a failure that says what to install."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("the page tests need Chromium and its driver: "
                    "apt-get install chromium chromium-driver (Debian; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(argument)
    # The service is given its driver, so Selenium never tries to download one.
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(smoke_exports):
    with serving.Server(smoke_exports, port=0, poll_seconds=0.2, log=lambda *args: None) as running:
        yield running


def open_page(browser, server):
    browser.get(server.url + "/")
    wait(browser, lambda: browser.execute_script("return document.body.dataset.ready"))


def wait(browser, condition, message="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.05).until(
        lambda _: condition(), message=f"{message} within {WAIT_SECONDS} s")


def settled(browser, app):
    """Waits until `app`'s panel is done or shows an error; returns its state."""
    section = browser.find_element("id", app)
    return wait(browser, lambda: section.get_attribute("data-state") in ("done", "error") and
                section.get_attribute("data-state"), f"{app}'s answer")


def text(browser, element_id):
    return browser.find_element("id", element_id).text


def error_text(browser, app):
    return browser.find_element("css selector", f"#{app} .error").text


def screenshot(browser, app, tmp_path):
    path = tmp_path / f"{app}.png"
    browser.find_element("id", app).screenshot(str(path))
    assert path.stat().st_size > 1000
    return path


def restart_state(browser, app):
    browser.execute_script(f"document.getElementById('{app}').dataset.state = 'ready'")


# The page's files and examples, over HTTP.

def test_the_page_its_files_and_examples_are_served(server):
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        html = response.read().decode()
    for app in ("imdb", "translation", "captioning", "nextframe"):
        assert f'id="{app}"' in html
    # Everything the page loads comes from the server: no CDN.
    assert "http://" not in html and "https://" not in html
    for name in ("page.js", "page.css"):
        with urllib.request.urlopen(f"{server.url}/static/{name}", timeout=30) as response:
            assert response.read() == (page.STATIC_DIR / name).read_bytes()
    for path in ("/static/missing.js", "/static/..%2Fpage.py", "/nothing", "/examples/imdb/0.json",
                 f"/examples/nextframe/{page.NEXTFRAME_EXAMPLES}.json"):
        assert call(server, path)[0] == 404, path
    status, examples = call(server, "/examples.json")
    assert status == 200 and examples["translation"]["beam_width"] >= 1
    assert examples["imdb"]["reviews"] and len(examples["captioning"]["images"]) == \
        page.CAPTIONING_EXAMPLES
    with urllib.request.urlopen(server.url + examples["captioning"]["images"][0],
                                timeout=30) as response:
        assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
    status, sequence = call(server, "/examples/nextframe/0.json")
    frames, truth = np.array(sequence["frames"]), np.array(sequence["truth"])
    assert frames.shape == (examples["nextframe"]["input_frames"], 64, 64)
    assert truth.shape == (examples["nextframe"]["output_frames"], 64, 64)
    assert frames.max() > 100 and frames.min() >= 0 and frames.max() <= 255


# The four panels in the browser.

def test_imdb_answers_as_the_person_types_and_from_the_examples(browser, server, tmp_path):
    open_page(browser, server)
    box = browser.find_element("id", "imdb-text")
    review = "What a wonderful, warm and funny film."
    box.send_keys(review)
    assert settled(browser, "imdb") == "done"
    expected = predict(server, "imdb", "serving_default", {"review": [review]})
    assert text(browser, "imdb-probability") == f"p(positive) = {expected['probability'][0]:.3f}"
    assert text(browser, "imdb-label") == expected["label"][0]
    width = browser.execute_script("return document.getElementById('imdb-bar').style.width")
    assert width == f"{expected['probability'][0] * 100:.1f}%"
    screenshot(browser, "imdb", tmp_path)

    restart_state(browser, "imdb")
    example = browser.find_elements("css selector", "#imdb-examples button")[1]
    example.click()
    assert settled(browser, "imdb") == "done"
    expected = predict(server, "imdb", "serving_default", {"review": [example.text]})
    assert box.get_attribute("value") == example.text
    assert text(browser, "imdb-probability") == f"p(positive) = {expected['probability'][0]:.3f}"

    # An empty box says what to do, and asks the server nothing.
    restart_state(browser, "imdb")
    box.clear()
    box.send_keys(" ")
    assert settled(browser, "imdb") == "error"
    assert "Type a review" in error_text(browser, "imdb")
    assert text(browser, "imdb-probability") == ""


def test_translation_by_keyboard_alone(browser, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    # Tab from the top of the page to the sentence box, type, press Enter.
    browser.find_element("tag name", "body").click()
    for _ in range(40):
        if browser.switch_to.active_element.get_attribute("id") == "translation-text":
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()
    else:
        pytest.fail("the translation box cannot be reached with the Tab key")
    sentence = "Where is the station?"
    ActionChains(browser).send_keys(sentence + Keys.ENTER).perform()
    assert settled(browser, "translation") == "done"
    beam_width = call(server, "/examples.json")[1]["translation"]["beam_width"]
    greedy = predict(server, "translation", "serving_default", {"sentence": [sentence]})
    beam = predict(server, "translation", "beam_search",
                   {"sentence": [sentence], "beam_width": beam_width})
    assert text(browser, "translation-greedy") == greedy[0].strip()
    assert text(browser, "translation-beam") == beam["translation"][0].strip()
    assert text(browser, "translation-log-probability") == \
        f"log-probability {beam['log_probability'][0]:.3f}"
    screenshot(browser, "translation", tmp_path)

    # Tab on to the first example and press Space: it is translated.
    restart_state(browser, "translation")
    ActionChains(browser).send_keys(Keys.TAB, Keys.TAB).perform()
    focused = browser.switch_to.active_element
    assert focused.get_attribute("outerHTML").startswith("<button")
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    assert settled(browser, "translation") == "done"
    assert browser.find_element("id", "translation-text").get_attribute("value") == focused.text

    restart_state(browser, "translation")
    box = browser.find_element("id", "translation-text")
    box.clear()
    box.send_keys(Keys.ENTER)
    assert settled(browser, "translation") == "error"
    assert "Type an English sentence" in error_text(browser, "translation")


def test_captioning_upload_drop_example_and_a_file_that_is_not_an_image(browser, server,
                                                                         tmp_path):
    open_page(browser, server)
    beam_width = call(server, "/examples.json")[1]["captioning"]["beam_width"]

    def expected(image_bytes):
        from elman.serving import request_value

        value = request_value(np.array([image_bytes], dtype=object))
        return (predict(server, "captioning", "serving_default", {"image_bytes": value}),
                predict(server, "captioning", "beam_search",
                        {"image_bytes": value, "beam_width": beam_width}))

    def shows(image_bytes):
        greedy, beam = expected(image_bytes)
        assert greedy["valid"] == [True]
        assert text(browser, "captioning-greedy") == greedy["caption"][0].strip()
        assert text(browser, "captioning-beam") == beam["caption"][0].strip()
        assert browser.find_element("id", "captioning-image").is_displayed()

    picture = page.example_file("/examples/captioning/3.png")[0]
    path = tmp_path / "shapes.png"
    path.write_bytes(picture)
    browser.find_element("id", "captioning-file").send_keys(str(path))
    assert settled(browser, "captioning") == "done"
    shows(picture)
    screenshot(browser, "captioning", tmp_path)

    restart_state(browser, "captioning")
    browser.find_elements("css selector", "#captioning-examples button")[1].click()
    assert settled(browser, "captioning") == "done"
    shows(page.example_file("/examples/captioning/1.png")[0])

    # A picture dropped on the drop zone.
    restart_state(browser, "captioning")
    browser.execute_script("""
        fetch('/examples/captioning/5.png').then((response) => response.blob()).then((blob) => {
          const transfer = new DataTransfer();
          transfer.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('captioning-drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        });""")
    assert settled(browser, "captioning") == "done"
    shows(page.example_file("/examples/captioning/5.png")[0])

    # A file that is not an image: the server answers valid=false, the page says so.
    restart_state(browser, "captioning")
    notes = tmp_path / "holiday.jpg"
    notes.write_text("these are my notes, not a photo")
    browser.find_element("id", "captioning-file").send_keys(str(notes))
    assert settled(browser, "captioning") == "error"
    assert "holiday.jpg is not a complete JPEG or PNG image" in error_text(browser, "captioning")
    assert text(browser, "captioning-greedy") == ""
    assert expected(notes.read_bytes())[0]["valid"] == [False]


def canvas_frames(browser, strip_id):
    """The pixels of a strip's canvases, `(frames, 64, 64)` uint8 (their red channel)."""
    frames = browser.execute_script(f"""
        return Array.from(document.querySelectorAll('#{strip_id} canvas'), (canvas) =>
          Array.from(canvas.getContext('2d').getImageData(0, 0, 64, 64).data)
            .filter((value, index) => index % 4 === 0));""")
    return np.array(frames, dtype=np.uint8).reshape(len(frames), 64, 64)


def test_nextframe_test_sequence_upload_animation_and_bad_files(browser, server, tmp_path):
    from selenium.webdriver.support.ui import Select

    open_page(browser, server)
    Select(browser.find_element("id", "nextframe-sequence")).select_by_value("2")
    browser.find_element("css selector", "#nextframe-form button[type=submit]").click()
    assert settled(browser, "nextframe") == "done"
    sequence = call(server, "/examples/nextframe/2.json")[1]
    given = np.array(sequence["frames"], np.uint8)
    output_frames = len(sequence["truth"])
    served = predict(server, "nextframe", "serving_uint8",
                     {"frames": given[None, ..., None].tolist(), "num_frames": output_frames})
    expected = np.array(served["predicted_frames"], np.uint8)[0, ..., 0]
    np.testing.assert_array_equal(canvas_frames(browser, "nextframe-predicted"), expected)
    np.testing.assert_array_equal(canvas_frames(browser, "nextframe-given"), given)
    np.testing.assert_array_equal(canvas_frames(browser, "nextframe-truth"),
                                  np.array(sequence["truth"], np.uint8))
    assert "frames predicted after" in text(browser, "nextframe-summary")
    assert "copying the last frame" in text(browser, "nextframe-summary")
    # The movie plays, and pauses.
    first = text(browser, "nextframe-frame")
    wait(browser, lambda: text(browser, "nextframe-frame") != first, "the next movie frame")
    browser.find_element("id", "nextframe-pause").click()
    paused = text(browser, "nextframe-frame")
    time.sleep(0.6)
    assert text(browser, "nextframe-frame") == paused
    screenshot(browser, "nextframe", tmp_path)

    # Uploaded float frames in [0, 1], as `elman predict nextframe frames.npy` takes them.
    restart_state(browser, "nextframe")
    path = tmp_path / "frames.npy"
    np.save(path, (given / 255.0).astype("float32"))
    browser.find_element("id", "nextframe-file").send_keys(str(path))
    assert settled(browser, "nextframe") == "done"
    np.testing.assert_array_equal(canvas_frames(browser, "nextframe-predicted"), expected)
    assert len(canvas_frames(browser, "nextframe-truth")) == 0

    for name, array, message in (
            ("small.npy", np.zeros((10, 32, 32), np.uint8), "frames must have shape"),
            ("pixels.npy", np.full((10, 64, 64), 7.0), "float frames must be in [0, 1]"),
            ("labels.npy", np.zeros((10, 64, 64), np.int64), "expected uint8")):
        restart_state(browser, "nextframe")
        buffer = io.BytesIO()
        np.save(buffer, array)
        (tmp_path / name).write_bytes(buffer.getvalue())
        browser.find_element("id", "nextframe-file").send_keys(str(tmp_path / name))
        assert settled(browser, "nextframe") == "error"
        assert name in error_text(browser, "nextframe")
        assert message in error_text(browser, "nextframe")


def test_a_phone_sized_window_has_no_sideways_scrolling(browser, server, tmp_path):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, server)
        browser.find_elements("css selector", "#translation-examples button")[0].click()
        assert settled(browser, "translation") == "done"
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        for app in ("imdb", "translation", "captioning", "nextframe"):
            width = browser.execute_script(
                f"return document.getElementById('{app}').getBoundingClientRect().right")
            assert width <= 390
        screenshot(browser, "translation", tmp_path)
    finally:
        browser.set_window_size(1100, 1400)


def test_a_missing_export_and_a_server_that_is_down_are_said_on_the_page(browser, smoke_exports,
                                                                         tmp_path):
    base_dir = tmp_path / "saved_models"
    shutil.copytree(smoke_exports / "imdb", base_dir / "imdb")
    server = serving.Server(base_dir, port=0, poll_seconds=0.2, log=lambda *args: None).start()
    try:
        open_page(browser, server)
        for app in ("translation", "captioning", "nextframe"):
            section = browser.find_element("id", app)
            assert section.get_attribute("data-state") == "missing"
            assert f"elman train {app} && elman export {app}" in section.text
        assert browser.find_element("id", "imdb").get_attribute("data-state") == "ready"
        assert "Serving imdb (version 1)" in text(browser, "server-status")
        # An export that appears is picked up without reloading the page.
        shutil.copytree(smoke_exports / "translation", base_dir / "translation")
        wait(browser, lambda: browser.find_element("id", "translation")
             .get_attribute("data-state") == "ready", "the new translation export")
    finally:
        server.stop()
    browser.find_element("id", "imdb-text").send_keys("Is anyone there?")
    assert settled(browser, "imdb") == "error"
    assert "Cannot reach elman serve" in error_text(browser, "imdb")
    assert "elman serve" in error_text(browser, "imdb")
