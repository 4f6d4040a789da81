"""The web console in a real browser (Debian's Chromium, driven by Selenium), as people
use it: sign in with password and one-time code, chat with a model as the answer
streams in, upload a dataset and train on it while the chart moves, administer tenants
and API keys, and be refused what one's scopes do not allow or a forged form asks.

Each test saves screenshots under build/console-screenshots/ (desktop 1280x800, phone
390 px): they are how a person sees LLM OS; look at them."""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from llmos.v1 import admin_pb2, admin_pb2_grpc, apps_pb2, apps_pb2_grpc
from tests.corpus import TEXT
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.people import EVERY_SCOPE, Person, new_person
from tools.browser import DESKTOP, PHONE, chromium, screenshot
from tools.harness import ROOT

SHOTS = ROOT / "build" / "console-screenshots"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def fresh(browser: Chrome) -> Chrome:
    """The browser with no one signed in."""
    browser.delete_all_cookies()
    return browser


def _wait(driver: Chrome, seconds: float = WAIT_S) -> WebDriverWait[Chrome]:
    return WebDriverWait(
        driver, seconds, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )


def _sign_in(driver: Chrome, stack: RunningStack, person: Person, shot: str = "") -> None:
    driver.get(stack.fields["console"])
    _wait(driver).until(lambda d: d.find_elements(By.ID, "totp"))
    driver.find_element(By.ID, "username").send_keys(person.username)
    driver.find_element(By.ID, "password").send_keys(person.password)
    driver.find_element(By.ID, "totp").send_keys(pyotp.TOTP(person.totp_secret).now())
    if shot:
        screenshot(driver, SHOTS, shot)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(driver).until(lambda d: "/console/" in d.current_url and d.find_elements(By.ID, "main"))


def _text(driver: Chrome, element_id: str) -> str:
    """The element's text, read in one step: live fragments replace elements at any time."""
    script = "const e = document.getElementById(arguments[0]); return e ? e.innerText : null;"
    found = driver.execute_script(script, element_id)
    assert found is not None, f"no element {element_id!r} on {driver.current_url}"
    return str(found).strip()


def test_a_person_signs_in_with_password_and_one_time_code(
    fresh: Chrome, stack: RunningStack
) -> None:
    person = new_person(stack, EVERY_SCOPE)
    fresh.get(stack.fields["console"])
    _wait(fresh).until(lambda d: d.find_elements(By.ID, "totp"))
    fresh.find_element(By.ID, "username").send_keys(person.username)
    fresh.find_element(By.ID, "password").send_keys(person.password)
    fresh.find_element(By.ID, "totp").send_keys("000000")
    fresh.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    refused = _wait(fresh).until(lambda d: d.find_elements(By.ID, "signin-error"))
    assert refused[0].text == "Wrong user name, password or one-time code."
    assert fresh.find_element(By.ID, "username").get_attribute("value") == person.username
    assert fresh.find_element(By.ID, "password").get_attribute("value") == ""  # never echoed
    _sign_in(fresh, stack, person, shot="signin")
    assert fresh.current_url.endswith("/console/chat")
    assert fresh.find_element(By.CSS_SELECTOR, ".who").text.startswith(person.username)
    labels = [a.text for a in fresh.find_elements(By.CSS_SELECTOR, "nav a")]
    assert labels == [
        "Chat", "Assistant", "Models", "Datasets", "Training", "Cluster", "Administration",
        "Audit",
    ]  # fmt: skip
    # the session cookie is out of scripts' reach
    assert fresh.execute_script("return document.cookie") == ""


def test_a_chat_answer_streams_into_the_page(fresh: Chrome, stack: RunningStack) -> None:
    person = new_person(stack, ["inference", "models:read"])
    _sign_in(fresh, stack, person)
    fresh.get(stack.fields["console"] + "chat")
    fresh.find_element(By.ID, "system").send_keys("You are a helpful assistant.")
    max_tokens = fresh.find_element(By.ID, "max_tokens")
    max_tokens.clear()
    max_tokens.send_keys("40")
    fresh.find_element(By.ID, "temperature").clear()
    fresh.find_element(By.ID, "temperature").send_keys("0")
    fresh.find_element(By.ID, "prompt").send_keys("Name three colours of the rainbow.")
    # every change the page makes to the answer, as it happens
    fresh.execute_script(
        """window.seen = [];
        new MutationObserver(() => {
          const answer = document.querySelector('[data-answer]');
          if (answer) window.seen.push(answer.textContent.length);
        }).observe(document.getElementById('transcript'),
                   {subtree: true, childList: true, characterData: true});"""
    )
    fresh.find_element(By.ID, "send").click()
    _wait(fresh).until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "[data-answer]").get_attribute("data-answer")
            in ("done", "failed")
        )
    )
    assert _text(fresh, "chat-error") == ""
    answer = fresh.find_elements(By.CSS_SELECTOR, "[data-answer]")[-1].text
    assert answer.strip()
    lengths = sorted(set(fresh.execute_script("return window.seen")))
    assert len([n for n in lengths if 0 < n < len(answer)]) >= 2, lengths  # it grew piece by piece
    stats = _text(fresh, "chat-stats")
    assert "completion tokens" in stats and "tokens/s" in stats and "first token after" in stats
    screenshot(fresh, SHOTS, "chat")


RETURNS = b"You may return any item within 30 days of delivery for a full refund."
HANDED_OFF = "I have passed our conversation to a person, who will take it from here."


@pytest.fixture
def console_kb(stack: RunningStack) -> Iterator[str]:
    """`console-kb` of the system tenant, holding one small text document."""
    with stack.channel() as channel:
        apps = apps_pb2_grpc.ApplicationsStub(channel)
        apps.CreateKnowledgeBase(apps_pb2.CreateKnowledgeBaseRequest(name="console-kb"), timeout=60)
        document = apps_pb2.Document(name="returns.txt", content=RETURNS)
        apps.AddDocuments(
            apps_pb2.AddDocumentsRequest(knowledge_base="console-kb", documents=[document]),
            timeout=120,
        )
        try:
            yield "console-kb"
        finally:
            apps.DeleteKnowledgeBase(
                apps_pb2.GetKnowledgeBaseRequest(name="console-kb"), timeout=60
            )


def _answered(driver: Chrome) -> bool:
    """The latest answer has finished (or failed)."""
    answers = driver.find_elements(By.CSS_SELECTOR, "[data-answer]")
    return bool(answers) and answers[-1].get_attribute("data-answer") in ("done", "failed")


def test_the_assistant_answers_from_a_knowledge_base_citing_its_passage(
    fresh: Chrome, stack: RunningStack, console_kb: str
) -> None:
    person = new_person(stack, ["inference", "datasets"])
    _sign_in(fresh, stack, person)
    fresh.get(stack.fields["console"] + "assistant")
    listed = fresh.find_element(By.ID, "bases").text
    assert console_kb in listed  # with its one document and one passage
    Select(fresh.find_element(By.ID, "knowledge-base")).select_by_value(console_kb)
    max_tokens = fresh.find_element(By.ID, "max_tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    fresh.find_element(By.ID, "question").send_keys("How many days do I have to return an item?")
    fresh.find_element(By.ID, "send").click()
    _wait(fresh, 180).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#citations li[data-document='returns.txt']")
    )
    _wait(fresh, 180).until(_answered)
    assert _text(fresh, "assistant-error") == ""
    answer = fresh.find_elements(By.CSS_SELECTOR, "[data-answer]")[-1]
    assert answer.get_attribute("data-answered") == "true"
    assert answer.text.strip()
    cited = fresh.find_element(By.CSS_SELECTOR, "#citations li")
    assert cited.find_element(By.CSS_SELECTOR, ".source").text == "returns.txt"
    assert cited.find_element(By.CSS_SELECTOR, ".passage").text == RETURNS.decode()
    screenshot(fresh, SHOTS, "assistant")
    # the same conversation, handed to a person: the assistant confirms it
    fresh.find_element(By.ID, "handoff").click()
    _wait(fresh).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-answer]")) == 2)
    _wait(fresh).until(_answered)
    assert _text(fresh, "assistant-error") == ""
    handed = fresh.find_elements(By.CSS_SELECTOR, "[data-answer]")[-1]
    assert handed.get_attribute("data-handed-off") == "true"
    assert handed.text == HANDED_OFF


def test_a_dataset_uploads_and_a_training_job_shows_its_progress_and_chart(
    fresh: Chrome, stack: RunningStack, tmp_path: Path
) -> None:
    person = new_person(stack, ["datasets", "training", "models:read"])
    _sign_in(fresh, stack, person)
    name = f"corpus-{uuid.uuid4().hex[:6]}"
    lines = tmp_path / "corpus.txt"
    lines.write_text(TEXT * 4)
    fresh.get(stack.fields["console"] + "datasets")
    fresh.find_element(By.ID, "f-file").send_keys(str(lines))
    fresh.find_element(By.ID, "f-name").send_keys(name)
    fresh.find_element(By.CSS_SELECTOR, "form[data-upload] button[type=submit]").click()
    _wait(fresh).until(lambda d: d.current_url.endswith(f"/console/datasets/{name}"))
    screenshot(fresh, SHOTS, "dataset")

    fresh.get(stack.fields["console"] + "training")
    form = {"name": f"poet-{uuid.uuid4().hex[:6]}", "steps": "0", "batch_size": "1",
            "seq_len": "16", "warmup_steps": "0", "eval_every": "20",
            "checkpoint_every": "100000", "memory_mib": "256"}  # fmt: skip
    _fill(fresh, form)
    Select(fresh.find_element(By.ID, "f-dataset")).select_by_visible_text(name)
    fresh.find_element(By.CSS_SELECTOR, "#submit-job button[type=submit]").click()
    # the scheduler refuses 0 steps and names the field: the error sits next to it
    error = _wait(fresh).until(lambda d: d.find_elements(By.ID, "e-steps"))[0]
    assert error.text == "must be between 1 and 10000000"  # the scheduler's own sentence
    assert fresh.find_element(By.ID, "f-steps").get_attribute("aria-invalid") == "true"
    assert fresh.find_element(By.ID, "f-name").get_attribute("value") == form["name"]
    _fill(fresh, {"steps": "3000"})  # a minute or more: cancelled long before its end
    fresh.find_element(By.CSS_SELECTOR, "#submit-job button[type=submit]").click()
    _wait(fresh).until(lambda d: "/console/training/j" in d.current_url)

    def step() -> int:
        return int(_text(fresh, "job-step") or 0)

    def chart_points() -> int:
        script = "const c = document.getElementById('loss-chart'); return c ? c.dataset.points : 0;"
        return int(fresh.execute_script(script) or 0)

    _wait(fresh, 120).until(lambda d: step() > 0 and chart_points() > 0)
    first_step, first_points = step(), chart_points()
    # the page refreshes itself: later steps and a longer curve, with no reload
    _wait(fresh, 120).until(lambda d: step() > first_step and chart_points() > first_points)
    _wait(fresh, 120).until(lambda d: _text(d, "job-val-loss") != "-")
    assert _text(fresh, "job-state") == "RUNNING"
    assert float(_text(fresh, "job-loss")) > 0
    assert _text(fresh, "job-eta") != "-"
    assert fresh.find_elements(By.CSS_SELECTOR, "#loss-chart polyline.val")
    screenshot(fresh, SHOTS, "training")
    fresh.find_element(By.CSS_SELECTOR, "form[data-confirm] button").click()
    fresh.switch_to.alert.accept()
    _wait(fresh, 120).until(lambda d: _text(d, "job-state") == "CANCELLED")


def _fill(driver: Chrome, values: dict[str, str]) -> None:
    for field, value in values.items():
        element = driver.find_element(By.ID, f"f-{field}")
        element.clear()
        element.send_keys(value)


def _tenants(stack: RunningStack) -> set[str]:
    with stack.channel() as channel:
        listed = admin_pb2_grpc.AdminStub(channel).ListTenants(
            admin_pb2.ListTenantsRequest(), timeout=10
        )
    return {t.name for t in listed.tenants}


def test_an_admin_creates_a_tenant_and_an_api_key_that_works(
    fresh: Chrome, stack: RunningStack
) -> None:
    person = new_person(stack, EVERY_SCOPE)
    _sign_in(fresh, stack, person)
    tenant = f"shop-{uuid.uuid4().hex[:6]}"
    fresh.get(stack.fields["console"] + "admin")
    form = fresh.find_element(By.ID, "create-tenant")
    form.find_element(By.NAME, "name").send_keys(tenant)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(fresh).until(lambda d: tenant in d.find_element(By.ID, "main").text)
    assert tenant in _tenants(stack)

    fresh.get(stack.fields["console"] + "admin/api-keys")
    form = fresh.find_element(By.ID, "create-api-key")
    form.find_element(By.NAME, "name").send_keys("storefront")
    tenant_field = form.find_element(By.NAME, "tenant")
    if tenant_field.tag_name == "select":
        Select(tenant_field).select_by_value(tenant)
    else:
        tenant_field.clear()
        tenant_field.send_keys(tenant)
    for box in form.find_elements(By.CSS_SELECTOR, "input[name=scopes]"):
        if box.get_attribute("value") in ("inference", "models:read") and not box.is_selected():
            box.click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    key = _wait(fresh).until(lambda d: d.find_elements(By.ID, "new-api-key"))[0].text.strip()
    screenshot(fresh, SHOTS, "admin")
    fresh.refresh()  # a secret is shown once
    assert key not in fresh.page_source
    request = urllib.request.Request(
        stack.fields["openai"] + "/models", headers={"Authorization": f"Bearer {key}"}
    )
    trust = ssl.create_default_context(cafile=stack.fields["tls_ca"])
    with urllib.request.urlopen(request, context=trust, timeout=30) as answer:
        assert answer.status == 200
        assert json.loads(answer.read())["data"]  # the key lists the models it may call


def test_an_admin_creates_a_user_who_signs_in_with_the_code_shown_once(
    fresh: Chrome, stack: RunningStack
) -> None:
    admin = new_person(stack, EVERY_SCOPE)
    _sign_in(fresh, stack, admin)
    fresh.get(stack.fields["console"] + "admin/users")
    form = fresh.find_element(By.ID, "create-user")
    username, password = f"u-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    form.find_element(By.NAME, "username").send_keys(username)
    tenant = form.find_element(By.NAME, "tenant")
    tenant.clear()
    tenant.send_keys("system")
    form.find_element(By.NAME, "password").send_keys(password)
    for box in form.find_elements(By.CSS_SELECTOR, "input[name=scopes]"):
        if box.get_attribute("value") == "cluster:read" and not box.is_selected():
            box.click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    secret = _wait(fresh).until(lambda d: d.find_elements(By.ID, "new-totp-secret"))[0].text
    qr_width = fresh.execute_script("return document.getElementById('new-totp-qr').naturalWidth")
    assert qr_width > 0  # the QR code image loaded (the policy allows it)
    screenshot(fresh, SHOTS, "admin-user")
    fresh.delete_all_cookies()
    _sign_in(fresh, stack, Person(username, password, secret.strip(), "system"))
    assert fresh.current_url.endswith("/console/cluster")


def test_without_admin_scope_there_is_no_admin_page_and_its_url_is_refused(
    fresh: Chrome, stack: RunningStack
) -> None:
    person = new_person(stack, ["inference", "models:read", "cluster:read"])
    _sign_in(fresh, stack, person)
    labels = [a.text for a in fresh.find_elements(By.CSS_SELECTOR, "nav a")]
    assert labels == ["Chat", "Assistant", "Models", "Cluster"]
    fresh.get(stack.fields["console"] + "admin")
    assert "needs scope 'admin'" in _text(fresh, "main")
    assert not fresh.find_elements(By.ID, "create-tenant")
    screenshot(fresh, SHOTS, "refused")


def test_a_forged_form_without_the_csrf_token_is_refused(
    fresh: Chrome, stack: RunningStack
) -> None:
    person = new_person(stack, EVERY_SCOPE)
    _sign_in(fresh, stack, person)
    fresh.get(stack.fields["console"] + "admin")
    action = fresh.find_element(By.ID, "create-tenant").get_attribute("action")
    tenant = f"forged-{uuid.uuid4().hex[:6]}"
    # the same form as the page's, as another page would build it: no CSRF token
    fresh.execute_script(
        """const form = document.createElement('form');
        form.method = 'post'; form.action = arguments[0];
        const name = document.createElement('input');
        name.name = 'name'; name.value = arguments[1];
        form.append(name); document.body.append(form); form.submit();""",
        action,
        tenant,
    )
    _wait(fresh).until(lambda d: "CSRF" in d.find_element(By.TAG_NAME, "body").text)
    assert tenant not in _tenants(stack)
    screenshot(fresh, SHOTS, "forged")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_page_labels_its_controls_and_fits_the_screen(
    stack: RunningStack, size: tuple[int, int]
) -> None:
    person = new_person(stack, EVERY_SCOPE)
    pages = ["chat", "assistant", "models", "datasets", "training", "cluster", "admin", "audit"]
    unlabelled_js = """return [...document.querySelectorAll('input, select, textarea')]
        .filter(c => c.type !== 'hidden' && c.labels.length === 0 && !c.getAttribute('aria-label'))
        .map(c => c.name || c.id);"""
    with chromium(size) as driver:
        _sign_in(driver, stack, person)
        for page in pages:
            driver.get(stack.fields["console"] + page)
            assert "/authorize" not in driver.current_url
            assert driver.find_element(By.TAG_NAME, "h1").text
            assert driver.execute_script(unlabelled_js) == [], page
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, f"{page} is {overflow} px wider than the {size[0]} px screen"
            screenshot(driver, SHOTS, f"tour-{page}" if size == DESKTOP else f"phone-{page}")
