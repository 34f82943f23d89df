"""SillyTavern's own browser UI (its npm release, in Debian's chromium through Playwright) chatting with
`openhermes serve` through each local Text Completion type, as a user sets it up: the persona name on first visit,
API Connections -> Text Completion -> the type -> the server's URL -> Connect, then a message from the chat box.
The reference for the reply is the server itself: the body SillyTavern's page sent, sent again straight to
`/v1/completions` (a fixed seed, set in SillyTavern's sampler panel), gives the text the page shows."""

import json
import shutil

import httpx
import pytest

from tests.serve.sillytavern import CUSTOM_SOURCE_FIELDS, needs_sillytavern

CHROMIUM = "/usr/bin/chromium"
pytestmark = [needs_sillytavern, pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                                    reason="Debian's chromium is not installed")]
URL_FIELD = {"ooba": "#textgenerationwebui_api_url_text", "llamacpp": "#llamacpp_api_url_text",
             "koboldcpp": "#koboldcpp_api_url_text"}
GENERATE = "/api/backends/text-completions/generate"
CHAT_GENERATE = "/api/backends/chat-completions/generate"


@pytest.fixture(scope="module")
def backend(open_server):
    return open_server


@pytest.fixture(scope="module")
def tavern(sillytavern_url):
    return sillytavern_url


@pytest.fixture(scope="module")
def page(tavern):
    """One page for the module, as a user keeps one tab open: loading SillyTavern's page takes about 5 s here, and
    each test connects again (the type it tests) and sets the sampler fields it relies on."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60000)
        page.goto(tavern + "/")
        # ready: the first visit asks for a persona name; later ones show the welcome chat
        page.wait_for_function("document.querySelector('dialog.popup textarea')?.offsetParent"
                               " || (window.SillyTavern && SillyTavern.getContext().chat.length > 0)")
        persona = page.locator("dialog.popup textarea")
        if persona.is_visible():
            persona.fill("Ann")
            page.locator("dialog.popup").get_by_text("Save", exact=True).click()
            page.locator("dialog.popup").wait_for(state="detached")
        yield page
        browser.close()


def open_api_drawer(page) -> None:
    """API Connections, opened unless it is open already (a click on its icon toggles it)."""
    if not page.locator("#main_api").is_visible():
        page.click("#API-status-top")
    page.locator("#main_api").wait_for(state="visible")


def connect(page, backend, api_type: str) -> None:
    """API Connections -> Text Completion -> the type -> the URL -> Connect, until the status names the model."""
    page.click("#API-status-top")
    page.select_option("#main_api", "textgenerationwebui")
    page.select_option("#textgen_type", api_type)
    page.fill(URL_FIELD[api_type], backend.url)
    page.click("#api_button_textgenerationwebui")
    # connected: the status line names the model the server reports (serve --model-name)
    page.wait_for_function("[...document.querySelectorAll('.online_status_text')]"
                           ".some(e => e.offsetParent && e.textContent.trim() === 'tiny-chat')")
    page.click("#API-status-top")  # the drawer closes


@pytest.fixture
def sent(page):
    """The bodies the page sends to SillyTavern's generate routes (text and chat completion) during one test."""
    bodies: list[dict] = []

    def note(request) -> None:
        if request.url.endswith((GENERATE, CHAT_GENERATE)):
            bodies.append(request.post_data_json)

    page.on("request", note)
    yield bodies
    page.remove_listener("request", note)


def send(page, message: str) -> tuple[str, str]:
    """A message from the chat box: (the reply in SillyTavern's chat, the text shown)."""
    page.fill("#send_textarea", message)
    page.click("#send_but")
    # SillyTavern's chat array: its welcome messages, then ours, then the reply once generation has ended
    page.wait_for_function("""message => { const chat = SillyTavern.getContext().chat;
        const mine = chat.findIndex(m => m.is_user && m.mes === message);
        return mine >= 0 && chat.slice(mine + 1).some(m => !m.is_user && !m.is_system)
            && $('#mes_stop').is(':hidden'); }""", arg=message)
    reply = page.evaluate("""message => { const chat = SillyTavern.getContext().chat;
        const mine = chat.findIndex(m => m.is_user && m.mes === message);
        return chat.slice(mine + 1).find(m => !m.is_user && !m.is_system).mes; }""", message)
    shown = page.locator("#chat .mes").last.locator(".mes_text").inner_text()
    return reply, shown


def resent(backend, body: dict) -> str:
    """The reference: the body the page sent, sent straight to the server."""
    direct = httpx.post(backend.url + "/v1/completions", json=body | {"stream": False}, timeout=120)
    assert direct.status_code == 200, direct.text
    return direct.json()["choices"][0]["text"]


def test_sillytavern_ui_chats_through_chat_completion_custom(page, sent, backend):
    """API Connections -> Chat Completion -> Custom (OpenAI-compatible) -> the server's /v1 -> Connect: SillyTavern
    picks the model from /v1/models, and a message from the chat box, streamed, gets the reply the server gives to
    the fields SillyTavern forwards. It runs first in the module, while the chat is short: this source sends no
    context size to cut to, and the page counts with a tokenizer of its own, so a chat past the model's window would
    get the server's 400 (docs/chat.md: `serve --truncate keep-system`)."""
    open_api_drawer(page)
    page.select_option("#main_api", "openai")
    page.select_option("#chat_completion_source", "custom")
    page.fill("#custom_api_url_text", backend.url + "/v1")
    page.click("#api_button_openai")
    page.wait_for_function("$('#model_custom_select').val() === 'tiny-chat'")  # the list SillyTavern fetched
    page.click("#API-status-top")
    page.evaluate("""() => { $('#seed_openai').val(7).trigger('input');
                             $('#stream_toggle').prop('checked', true).trigger('input');
                             $('#openai_max_tokens').val(60).trigger('input'); }""")
    try:
        reply, _ = send(page, "Tell me about the forest, please.")
    finally:
        open_api_drawer(page)
        page.select_option("#main_api", "textgenerationwebui")  # the text-completion API the other tests use
        page.click("#API-status-top")
    assert len(sent) == 1
    body = sent[0]
    assert body["chat_completion_source"] == "custom" and body["model"] == "tiny-chat" and body["stream"] is True
    assert body["seed"] == 7 and body["messages"][-1] == {"role": "user", "content": "Tell me about the forest, please."}
    forwarded = {k: body[k] for k in CUSTOM_SOURCE_FIELDS if k in body} | {"stream": False}
    direct = httpx.post(backend.url + "/v1/chat/completions", json=forwarded, timeout=120)
    assert direct.status_code == 200, direct.text
    text = direct.json()["choices"][0]["message"]["content"]
    assert text.strip() and reply.strip() == text.strip()


@pytest.mark.parametrize(("api_type", "streaming"), [("ooba", False), ("llamacpp", True), ("koboldcpp", True)])
def test_sillytavern_ui_chats_through_each_local_type(page, sent, backend, api_type, streaming):
    connect(page, backend, api_type)
    # the sampler panel's seed and streaming switch, as its inputs set them
    page.evaluate("""s => { $('#seed_textgenerationwebui').val(7).trigger('input');
                            $('#streaming_textgenerationwebui').prop('checked', s).trigger('input'); }""", streaming)
    message = f"Hello there, who are you? ({api_type})"  # one chat goes on over the tests: each its own line
    reply, shown = send(page, message)

    assert len(sent) == 1
    body = sent[0]
    assert body["api_type"] == api_type and body["seed"] == 7 and bool(body.get("stream")) == streaming
    assert body["prompt"].rstrip().endswith(f"Ann: {message}\nAssistant:")
    text = resent(backend, body)
    assert text.strip(), json.dumps(body)[:500]
    assert reply.strip() == text.strip()
    assert shown.split()[:3] == text.split()[:3]  # the page shows it (markdown rendering aside)


def test_a_quoted_line_in_the_banned_box_never_reaches_the_chat(page, sent, backend):
    """SillyTavern's Banned Tokens/Strings box: a line in quotes is sent as a banned string. Banning the letter e
    takes back every token that would write one, streamed; the chat shows a reply without it."""
    connect(page, backend, "ooba")
    page.evaluate("""() => { $('#seed_textgenerationwebui').val(7).trigger('input');
                             $('#streaming_textgenerationwebui').prop('checked', true).trigger('input');
                             $('#banned_tokens_textgenerationwebui').val('"e"').trigger('input'); }""")
    reply, _ = send(page, "Tell me about the forest here, please.")
    assert sent[0]["banned_strings"] == ["e"]
    assert reply.strip() and "e" not in reply.lower()
    assert reply.strip() == resent(backend, sent[0]).strip()
    page.evaluate("() => $('#banned_tokens_textgenerationwebui').val('').trigger('input')")


def cancelled(backend) -> float:
    """The server's count of requests stopped because their client went away (its /metrics)."""
    for line in httpx.get(backend.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("openhermes_cancelled_requests_total "):
            return float(line.split()[1])
    raise AssertionError("no cancelled-requests counter in /metrics")


def test_swipe_and_stop_in_sillytavern_page(page, sent, backend):
    """A swipe (the arrow on the last reply) sends the same prompt again and shows the new reply as a second swipe;
    Stop during a streamed reply ends it, and the server stops decoding it (its metrics count it cancelled)."""
    connect(page, backend, "llamacpp")
    page.evaluate("""() => { $('#seed_textgenerationwebui').val(-1).trigger('input');
                             $('#streaming_textgenerationwebui').prop('checked', true).trigger('input'); }""")
    first, _ = send(page, "Tell me a story about the river.")
    page.locator("#chat .last_mes .swipe_right").click()
    page.wait_for_function("""() => { const m = SillyTavern.getContext().chat.at(-1);
        return m.swipes?.length === 2 && m.swipes[1] && $('#mes_stop').is(':hidden'); }""")
    last = page.evaluate("() => SillyTavern.getContext().chat.at(-1)")
    assert len(sent) == 2 and sent[1]["prompt"] == sent[0]["prompt"]
    assert last["swipes"][0] == first and last["mes"] == last["swipes"][1]

    before = cancelled(backend)
    page.evaluate("""() => { $('#amount_gen').val(2000).trigger('input');  // a reply long enough to stop
                             $('#ban_eos_token_textgenerationwebui').prop('checked', true).trigger('input'); }""")
    page.fill("#send_textarea", "Now a long one, please.")
    page.click("#send_but")
    page.wait_for_function("() => $('#mes_stop').is(':visible') && SillyTavern.getContext().chat.at(-1).mes?.length > 0"
                           " && !SillyTavern.getContext().chat.at(-1).is_user")
    page.click("#mes_stop")
    page.wait_for_function("() => $('#mes_stop').is(':hidden')")
    page.evaluate("""() => { $('#amount_gen').val(250).trigger('input');
                             $('#ban_eos_token_textgenerationwebui').prop('checked', false).trigger('input'); }""")
    for _ in range(100):
        if cancelled(backend) > before:
            break
        page.wait_for_timeout(100)
    assert cancelled(backend) == before + 1
    assert len(sent) == 3 and sent[2]["ban_eos_token"] is True
