"""What a new user meets first: /docs renders the operations in a real browser (offline), and the errors of the
first tries (a GET on a POST operation, an empty edit) say what to send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from testkit.browser import chromium, missing_browser
from testkit.servers import RunningServer

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

WAIT_S = 30
needs_browser = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


@pytest.fixture(scope="module")
def docs_page(default_server: RunningServer) -> Iterator[WebDriver]:
    with chromium() as driver:
        driver.get(default_server.base_url + "/docs")
        yield driver


@needs_browser
def test_docs_render_every_operation_in_a_browser(docs_page: WebDriver, client: TestClient) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    shown = WebDriverWait(docs_page, WAIT_S).until(
        lambda d: d.find_elements("css selector", ".opblock-summary-path") or None, "no operation was rendered"
    )
    listed = {element.get_attribute("data-path") for element in shown}
    body = docs_page.find_element("tag name", "body").text
    assert "Unable to render this definition" not in body
    schema_paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/encode", "/decode", "/sample", "/edit", "/interpolate", "/detect"} <= listed
    assert listed == schema_paths
    assert "OAS 3.1" in body  # Swagger UI read the document as the OpenAPI 3.1 it is
    # Nothing was fetched from elsewhere: every resource the page loaded came from this server.
    origin = docs_page.execute_script("return location.origin")
    resources = docs_page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(origin) for url in resources), resources


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("/edit", '"attributes": {"Smiling": 2}'),
        ("/encode", 'the file "image"'),
        ("/decode", '{"z": [...]}'),
        ("/interpolate", '"start"'),
        ("/detect", "image/*"),
    ],
)
def test_a_get_on_a_post_operation_says_to_post_and_what_to_send(client: TestClient, path: str, hint: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    detail = answer.json()["detail"]
    assert f"GET {path} is not allowed; use POST" in detail and hint in detail and "/docs" in detail


def test_a_wrong_method_elsewhere_still_names_the_allowed_one(client: TestClient) -> None:
    answer = client.post("/sample")
    assert answer.status_code == 405 and "use GET" in answer.json()["detail"]


@pytest.mark.parametrize("as_form", [True, False])
def test_an_empty_edit_says_what_to_send(client: TestClient, as_form: bool) -> None:
    z_dim = client.get("/metadata").json()["z_dim"]
    if as_form:
        from tests.images import face_photo, image_bytes

        answer = client.post(
            "/edit?align=none", files={"image": ("p.png", image_bytes(face_photo()))}, data={"attributes": "{}"}
        )
    else:
        answer = client.post("/edit", json={"z": [0.0] * z_dim, "attributes": {}})
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "attributes"]
    assert "attributes is empty" in error["msg"] and '{"Smiling": 2}' in error["msg"] and "/attributes" in error["msg"]
