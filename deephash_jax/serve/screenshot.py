r"""Drives the demo page in headless Chromium: upload a photo, wait for the results, screenshot.

    python -m deephash_jax.demo.screenshot --url=http://127.0.0.1:8000 \
        --query=catalogue/query/shirt/x.jpg --output=docs/demo.png

Used by the browser test (tests/test_demo.py) and for docs/demo.png. Needs Selenium (the `demo`
extra) and Chromium with its driver (Debian: `apt-get install chromium chromium-driver`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-dev-shm-usage")


def find_chromium() -> tuple[str, str] | None:
  """(browser, driver) paths, or None when either is not installed."""
  browser = next((p for p in CHROMIUM if os.path.exists(p)), None) or shutil.which("chromium")
  driver = next((p for p in CHROMEDRIVER if os.path.exists(p)), None) or shutil.which(
      "chromedriver")
  return (browser, driver) if browser and driver else None


def _driver(width: int, height: int):
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  found = find_chromium()
  if found is None:
    raise FileNotFoundError("Chromium and chromedriver are needed: apt-get install chromium "
                            "chromium-driver")
  os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download.
  options = webdriver.ChromeOptions()
  options.binary_location = found[0]
  for flag in CHROMIUM_FLAGS:
    options.add_argument(flag)
  options.add_argument(f"--window-size={width},{height}")
  return webdriver.Chrome(service=Service(executable_path=found[1]), options=options)


_IMAGES_LOADED = """
  return Array.from(document.querySelectorAll(arguments[0]))
      .every(img => !img.getAttribute('src') || (img.complete && img.naturalWidth > 0));
"""


def capture(url: str, query_image: str, output: str | None = None, *, k: int = 10,
            width: int = 1280, height: int = 860, timeout: float = 60.0) -> dict:
  """Opens `url`, uploads `query_image`, waits for the results, saves a PNG to `output`.

  Returns what the page shows: the facts, the status line, any error, and per result its
  clothing type and distance text.
  """
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import Select  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  driver = _driver(width, height)
  try:
    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#facts dd"))
    wait.until(lambda d: d.execute_script(_IMAGES_LOADED, "#picker img"))
    Select(driver.find_element(By.ID, "k")).select_by_visible_text(str(k))
    driver.find_element(By.ID, "file").send_keys(os.path.abspath(query_image))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result")
               or d.find_element(By.ID, "error").is_displayed())
    wait.until(lambda d: d.execute_script(_IMAGES_LOADED, "#results img, #query-preview"))
    results = [{"clothing_type": li.find_element(By.CLASS_NAME, "type").text,
                "distance": li.find_element(By.CLASS_NAME, "distance").text}
               for li in driver.find_elements(By.CSS_SELECTOR, "#results .result")]
    error = driver.find_element(By.ID, "error")
    page = {
        "title": driver.title,
        "facts": driver.find_element(By.ID, "facts").text,
        "status": driver.find_element(By.ID, "status").text,
        "error": error.text if error.is_displayed() else "",
        "results": results,
    }
    if output:
      os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
      driver.save_screenshot(output)
      page["screenshot"] = os.path.abspath(output)
    return page
  finally:
    driver.quit()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--url", default="http://127.0.0.1:8000")
  parser.add_argument("--query", required=True, help="the photo to upload")
  parser.add_argument("--output", default="docs/demo.png")
  parser.add_argument("--k", type=int, default=10)
  args = parser.parse_args(argv)
  page = capture(args.url, args.query, args.output, k=args.k)
  print(json.dumps(page, indent=2))
  return 0 if page["results"] and not page["error"] else 1


if __name__ == "__main__":
  sys.exit(main())
