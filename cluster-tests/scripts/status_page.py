#!/usr/bin/env python3
"""Drives the status page in a real headless Chromium (Selenium + Debian's chromium-driver).

Usage: status_page.py URL OUT_DIR MEMBER[,MEMBER...] VICTIM SERVICE_ROW [TOKEN]

Protocol with the test on stdin/stdout, one line each:
  1. loads URL (entering TOKEN in the page's token form when it asks), waits until every MEMBER
     shows `alive` and `ready`, the health line says healthy and the external-service row
     SERVICE_ROW (`mesh/name`) shows connections > 0; saves OUT_DIR/status-healthy.png and
     prints `SEEN <connections>`;
  2. waits for the line `KILLED` on stdin; then, without reloading (the page refreshes itself),
     waits until VICTIM's row shows `dead` and the health line says degraded; saves
     OUT_DIR/status-dead.png and prints `DEAD <seconds since KILLED>`.
Any failure prints `FAIL <why>` (with the page's text) and exits 1.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def chromium_binary():
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if os.path.exists(path):
            return path
    raise SystemExit("FAIL no Chromium found: apt-get install chromium chromium-driver")


def driver_binary():
    for path in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"):
        if os.path.exists(path):
            return path
    raise SystemExit("FAIL no chromedriver found: apt-get install chromium-driver")


def say(line):
    print(line, flush=True)


def main():
    url, out_dir, members, victim, service_row = sys.argv[1:6]
    token = sys.argv[6] if len(sys.argv) > 6 else None
    members = members.split(",")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100", "--hide-scrollbars"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_binary()), options=options)
    browser.set_page_load_timeout(30)
    try:
        run(browser, url, out_dir, members, victim, service_row, token)
    except Exception as e:  # report, with what the page showed
        body = ""
        try:
            body = browser.find_element(By.TAG_NAME, "body").text
        except Exception:
            pass
        say("FAIL %s\n--- page text ---\n%s" % (e, body))
        sys.exit(1)
    finally:
        browser.quit()


def wait(browser, what, check, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # an element replaced mid-read: try again
            last = e
        time.sleep(0.1)
    raise RuntimeError("timed out after %ss waiting for %s (last: %r)" % (seconds, what, last))


def member_state(browser, name):
    rows = browser.find_elements(By.CSS_SELECTOR, "#members tr[data-member]")
    states = [r.get_attribute("data-state") for r in rows if r.get_attribute("data-member") == name]
    ready = [("not ready" not in r.text and "ready" in r.text) for r in rows
             if r.get_attribute("data-member") == name]
    return states, ready


def run(browser, url, out_dir, members, victim, service_row, token):
    browser.get(url)
    if token:
        form = wait(browser, "the token form",
                    lambda: browser.find_element(By.ID, "auth").is_displayed()
                    and browser.find_element(By.ID, "auth"), 20)
        browser.find_element(By.ID, "token").send_keys(token)
        form.submit()

    def healthy():
        for name in members:
            states, ready = member_state(browser, name)
            if states != ["alive"] or ready != [True]:
                return None
        if browser.find_element(By.ID, "health").get_attribute("data-state") != "healthy":
            return None
        rows = [r for r in browser.find_elements(By.CSS_SELECTOR, "#services tr[data-service]")
                if r.get_attribute("data-service") == service_row]
        if not rows or int(rows[0].get_attribute("data-connections")) <= 0:
            return None
        return int(rows[0].get_attribute("data-connections"))

    connections = wait(browser, "every member alive and ready with traffic shown", healthy, 30)
    browser.save_screenshot(os.path.join(out_dir, "status-healthy.png"))
    say("SEEN %d" % connections)

    if sys.stdin.readline().strip() != "KILLED":
        raise RuntimeError("expected KILLED on stdin")
    killed = time.monotonic()

    def dead():
        states, _ = member_state(browser, victim)
        degraded = browser.find_element(By.ID, "health").get_attribute("data-state") == "degraded"
        return states == ["dead"] and degraded

    wait(browser, victim + " shown dead", dead, 40)
    seconds = time.monotonic() - killed
    browser.save_screenshot(os.path.join(out_dir, "status-dead.png"))
    say("DEAD %.2f" % seconds)


if __name__ == "__main__":
    main()
