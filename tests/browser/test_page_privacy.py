"""What the page's requests reveal to the relay by their size (issue 15 item 3): nothing about the prompt's length
within a bucket. The page pads every inner request with RFC 9292 zero bytes, as ``veil proxy`` does."""

from __future__ import annotations

from playwright.sync_api import Page

from .conftest import Chain, PageLog, assistant_texts, send, wait_ready


def test_page_requests_of_different_prompt_lengths_look_alike(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    sizes = []
    for prompt in ("hi", "a longer question about" + " confidential inference" * 20):
        start = len(chain.capture.snapshot())
        pg.goto(chain.page_url)  # a new conversation each time: only the prompt differs
        wait_ready(pg)
        send(pg, prompt)
        pg.wait_for_selector(".msg.assistant.done", timeout=20000)
        assert assistant_texts(pg)[-1] == prompt
        chats = [e for e in chain.capture.snapshot()[start:]
                 if e.method == "POST" and e.content_type == "message/ohttp-chunked-req"]
        assert len(chats) == 1
        sizes.append(len(chats[0].request))
    assert sizes[0] == sizes[1], f"the relay can tell the prompts apart: {sizes}"
    assert not log.errors, log.errors
