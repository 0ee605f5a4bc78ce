"""The web viewer in headless Chromium (tests/it/web.rs runs this against the real binary).

    web_viewer.py URL CHROMIUM OUT_DIR

Drives the page as a person would: the cat photo sample explained (label, overlay, both
saturation plots, progress before the result), a long Explain cancelled (the server is free
for the next one at once), a text and a tabular row explained, a server error shown as a
message, the keyboard's focus order, and the phone width. Fails on any console error.
Screenshots go to OUT_DIR. Prints one JSON line of what it saw.
"""

import json
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

URL, CHROMIUM, OUT = sys.argv[1], sys.argv[2], Path(sys.argv[3])
OUT.mkdir(parents=True, exist_ok=True)

# Generous: 2 busy cores explain a 224 x 224 photo at about 2 s per 16 steps.
RESULT_TIMEOUT_MS = 120_000
seen = {}


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def wait_until(page, expression, timeout):
    """Polls `expression` in the page until it is true. (Playwright's wait_for_function
    evaluates its predicate with eval, which the page's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        check(time.monotonic() < deadline, f"waited {timeout} ms for {expression}")
        time.sleep(0.1)


def results_done(page):
    return page.locator('.result[data-state="done"]').count()


def explain_and_wait(page, steps):
    """Clicks Explain with `steps` and waits for a new finished result card; returns it."""
    before = page.locator(".result").count()
    page.fill("#steps", str(steps))
    page.click("#explain")
    wait_until(page, f"document.querySelectorAll('.result').length > {before}", RESULT_TIMEOUT_MS)
    card = page.locator(".result").first
    state = card.get_attribute("data-state")
    check(state == "done", f"the run ended {state}: {card.inner_text()[:500]}")
    return card


def wait_predictions(page):
    page.wait_for_selector("#predictions .prediction", timeout=60_000)


def check_headers(page):
    """The page for browsers, KServe's liveness for the rest, the assets' content types."""
    html = page.request.get(URL, headers={"Accept": "text/html"})
    check(html.headers["content-type"].startswith("text/html"), html.headers)
    check("content-security-policy" in html.headers, html.headers)
    alive = page.request.get(URL, headers={"Accept": "application/json"})
    check(alive.json() == {"status": "alive"}, alive.text())
    for path, kind in [("ui/app.js", "text/javascript"), ("ui/style.css", "text/css"), ("ui/samples/chelsea.png", "image/png")]:
        answer = page.request.get(URL + path)
        check(answer.ok and answer.headers["content-type"].startswith(kind), f"{path}: {answer.headers}")


def photo_flow(page):
    wait_until(page, "document.querySelector('#model').value === 'efficientnet-lite0'", 60_000)
    page.click('button[data-sample="chelsea.png"]')
    wait_predictions(page)
    top = page.locator("#predictions .prediction .name").first.inner_text()
    check("cat" in top, f"chelsea.png's top class is {top!r}")
    page.select_option("#baseline", label="blur")
    page.wait_for_timeout(300)
    # The blur preview draws the photo: some pixel is not the grey placeholder.
    preview_colours = page.evaluate(
        """() => { const c = document.getElementById('baseline-preview');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   const s = new Set(); for (let i = 0; i < d.length; i += 4 * 97) s.add(d[i] + ',' + d[i+1] + ',' + d[i+2]);
                   return s.size; }"""
    )
    check(preview_colours > 5, f"the blur baseline preview has {preview_colours} colours")
    page.select_option("#baseline", label="black")
    card = explain_and_wait(page, 16)
    label = card.locator(".target").get_attribute("data-label")
    check(label == top, f"explained {label!r}, predicted {top!r}")
    progress = int(card.get_attribute("data-progress-events"))
    check(progress >= 1, "no progress event arrived before the result")
    sizes = card.locator(".overlay img").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    check(len(sizes) == 2 and all(w > 0 and h > 0 for w, h in sizes), f"overlay images: {sizes}")
    check(card.locator(".mask img").evaluate("i => i.naturalWidth") > 0, "the mask did not render")
    paths = card.locator(".line-chart path.series").evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
    check(len(paths) == 2 and all(p and p.count("L") >= 8 for p in paths), f"saturation plots: {paths}")
    chart = card.locator(".line-chart").first
    chart.hover()
    readout = chart.locator(".readout").text_content()
    check(readout.startswith("alpha"), f"hovering the plot shows {readout!r}")
    for key in ["score_input", "score_baseline", "attribution_sum", "convergence_delta", "steps", "elapsed_ms"]:
        check(card.locator(f'[data-key="{key}"]').inner_text().strip(), f"{key} is not shown")
    seen["photo"] = {"label": label, "progress_events": progress, "overlay": sizes[0]}
    page.screenshot(path=str(OUT / "viewer-photo.png"), full_page=True)


def technique_flow(page):
    """Blur IG on the photo, then IG under a VarGrad noise tunnel: the server says what ran."""
    page.select_option("#technique", "blur-ig")
    card = explain_and_wait(page, 8)
    ran = card.locator('[data-key="technique"]').inner_text().strip()
    check(ran == "blur ig", f"asked for Blur IG, the server ran {ran!r}")
    check("Blur IG" in card.locator("h3").first.inner_text(), card.locator("h3").first.inner_text())
    check(card.locator(".mask img").evaluate("i => i.naturalWidth") > 0, "Blur IG's mask did not render")
    page.select_option("#technique", "")
    check(page.locator("#noise-kind").is_hidden(), "the noise tunnel's kind shows with no samples")
    page.fill("#noise-samples", "2")
    page.select_option("#noise-kind", "vargrad")
    card = explain_and_wait(page, 4)
    samples = card.locator('[data-key="noise_samples"]').inner_text().strip()
    check(samples == "2", f"asked for 2 noise samples, the server ran {samples!r}")
    check("VarGrad × 2" in card.locator("h3").first.inner_text(), card.locator("h3").first.inner_text())
    page.fill("#noise-samples", "0")
    seen["techniques"] = {"blur_ig": ran, "noise_samples": samples}


def cancel_flow(page):
    """A long Explain cancelled: the page says so and the server's one slot is free again."""
    page.fill("#steps", "2048")
    page.click("#explain")
    wait_until(page, "Number(document.getElementById('run-status').dataset.progressEvents) >= 1", RESULT_TIMEOUT_MS)
    page.click("#cancel")
    cancelled = time.monotonic()
    wait_until(page, "document.getElementById('run-status').dataset.state === 'cancelled'", 10_000)
    check("Cancelled" in page.inner_text("#run-status"), page.inner_text("#run-status"))
    # The server runs one Explain at a time and queues none (the test's flags), so another
    # Explain is refused (429) for as long as the cancelled one runs: 2048 steps would take
    # minutes. Asked from here (a refusal the page saw would be a console error), it must be
    # taken within seconds.
    row = {"bill_length_mm": 49.0, "bill_depth_mm": 19.5, "flipper_length_mm": 210.0, "body_mass_g": 3950.0, "island": 1, "sex": 1}
    for attempt in range(1, 101):
        answer = page.request.post(URL + "v1/models/penguins:explain", data={"instances": [row], "parameters": {"steps": 4}})
        if answer.ok:
            break
        check(answer.status == 429, f"{answer.status}: {answer.text()}")
        check(time.monotonic() - cancelled < 10, "the cancelled Explain still holds the server's slot after 10 s")
        time.sleep(0.1)
    free_after = time.monotonic() - cancelled
    card = explain_and_wait(page, 8)
    seen["cancel"] = {"server_free_after_s": round(free_after, 2), "attempts": attempt, "next": card.get_attribute("data-state")}


def text_flow(page):
    sentence = "The acting was wonderful but the ending was terrible."
    page.select_option("#model", "sentiment")
    page.wait_for_selector("#text-input")
    page.fill("#text-input", sentence)
    wait_predictions(page)
    card = explain_and_wait(page, 16)
    words = card.locator(".tokens .token").evaluate_all(
        "spans => spans.map(s => [s.textContent, Number(s.dataset.attribution), getComputedStyle(s).backgroundColor])"
    )
    texts = [w for w, _, _ in words]
    expected = sentence.replace(".", " .").split()
    check([t.lower() for t in texts] == [e.lower() for e in expected], f"words {texts}, expected {expected}")
    coloured = [c for _, a, c in words if a != 0]
    check(coloured and all(c.startswith("rgba(") for c in coloured), f"colours {coloured}")
    card.locator(".tokens .token").nth(3).hover()
    check("wonderful" in card.locator(".token-readout").inner_text(), card.locator(".token-readout").inner_text())
    seen["text"] = {"words": texts, "label": card.locator(".target").get_attribute("data-label")}
    page.screenshot(path=str(OUT / "viewer-text.png"), full_page=True)


def tabular_flow(page):
    page.select_option("#model", "penguins")
    page.wait_for_selector("#feature-bill_length_mm")
    page.fill("#feature-bill_length_mm", "39.5")
    page.fill("#feature-flipper_length_mm", "190")
    wait_predictions(page)
    page.wait_for_timeout(400)  # the prediction of the edited row
    card = explain_and_wait(page, 16)
    bars = card.locator(".bar-chart rect.bar").evaluate_all("rs => rs.map(r => r.dataset.feature)")
    features = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island", "sex"]
    check(sorted(bars) == sorted(features), f"bars {bars}")
    labels = card.locator(".bar-label").evaluate_all("ts => ts.map(t => t.textContent)")
    check(any(l.startswith("bill_length_mm = 39.5") for l in labels), f"labels {labels}")
    seen["tabular"] = {"bars": bars, "label": card.locator(".target").get_attribute("data-label")}
    page.screenshot(path=str(OUT / "viewer-tabular.png"), full_page=True)
    with page.expect_download() as download:
        card.get_by_role("button", name="Download JSON").click()
    saved = json.loads(Path(download.value.path()).read_text())
    check(sorted(f["name"] for f in saved["features"]) == sorted(features), f"downloaded {saved.keys()}")


def phone_flow(page):
    """At a phone's width: one column, nothing wider than the screen."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    width = page.evaluate("document.documentElement.scrollWidth")
    check(width <= 390, f"the page is {width} px wide at a phone's 390")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(OUT / "viewer-phone-top.png"))
    page.locator(".result").first.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "viewer-phone-result.png"))
    page.set_viewport_size({"width": 1280, "height": 800})


def compare_flow(page):
    """Two baselines at two step counts: four cards side by side, each titled by its run."""
    before = results_done(page)
    page.click(".compare summary")
    check(page.locator("#compare-baselines input:checked").count() == 2, "two baselines are checked by default")
    page.fill("#compare-steps", "8, 32")
    page.click("#compare")
    wait_until(page, "document.getElementById('run-status').dataset.state === 'done'", RESULT_TIMEOUT_MS)
    check(results_done(page) == before + 4, f"{results_done(page) - before} comparison results")
    titles = page.locator(".result h3").all_inner_texts()[:4]
    check(len(set(titles)) == 4 and sum("8 steps" in t for t in titles) == 2, f"titles {titles}")
    tops = page.locator(".result").evaluate_all("cs => cs.slice(0, 4).map(c => c.getBoundingClientRect().top)")
    check(tops[0] == tops[1], f"comparison cards are not side by side: {tops}")
    seen["compare"] = titles
    page.screenshot(path=str(OUT / "viewer-compare.png"), full_page=True)


def keyboard_flow(page):
    """Tab reaches the model picker, the samples and Explain, in that order."""
    page.goto(URL)
    wait_until(page, "!document.querySelector('#model').disabled", 60_000)
    page.wait_for_selector('button[data-sample="coffee.png"]')
    order = []
    for _ in range(40):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.dataset.sample || document.activeElement.tagName"))
    check("model" in order and "coffee.png" in order, f"focus order {order}")
    check(order.index("model") < order.index("coffee.png"), f"focus order {order}")
    page.focus('button[data-sample="coffee.png"]')
    page.keyboard.press("Enter")
    wait_predictions(page)
    check("espresso" in page.locator("#predictions .name").first.inner_text(), "Enter on a sample did not pick it")
    seen["focus_order"] = order[:12]


def error_flow(browser):
    """A request the server refuses: its message is shown (the browser logs the 400 itself)."""
    page = browser.new_page()
    logged = []
    page.on("console", lambda m: logged.append(m.text) if m.type == "error" else None)
    page.goto(URL)
    wait_until(page, "!document.querySelector('#model').disabled", 60_000)
    page.click('button[data-sample="coffee.png"]')
    wait_predictions(page)
    page.fill("#steps", "1000000")
    before = page.locator(".result").count()
    page.click("#explain")
    wait_until(page, f"document.querySelectorAll('.result').length > {before}", 30_000)
    card = page.locator(".result").first
    check(card.get_attribute("data-state") == "error", card.get_attribute("data-state"))
    message = card.locator(".message").inner_text()
    check("steps" in message, f"error message {message!r}")
    check(all("status of 400" in text for text in logged), f"console errors: {logged}")
    seen["error"] = message
    page.close()


def main():
    console_errors = []
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        check_headers(page)
        page.goto(URL)
        photo_flow(page)
        technique_flow(page)
        cancel_flow(page)
        text_flow(page)
        tabular_flow(page)
        compare_flow(page)
        phone_flow(page)
        keyboard_flow(page)
        check(not console_errors, f"console errors: {console_errors}")
        error_flow(browser)
        browser.close()
    print(json.dumps({"ok": True, **seen}))


if __name__ == "__main__":
    main()
