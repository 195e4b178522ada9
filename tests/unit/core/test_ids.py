import re

from pipeline.core import ids


def test_user_contact_id_depends_on_workspace_and_user_only() -> None:
    a = ids.user_contact_id("ws", "u1")
    assert a == ids.user_contact_id("ws", "u1")
    assert a != ids.user_contact_id("ws", "u2")
    assert a != ids.user_contact_id("ws2", "u1")
    assert re.fullmatch(r"[0-9a-f]{24}", a)


def test_visitor_contact_ids_differ_per_session_and_kind() -> None:
    v0 = ids.visitor_contact_id("ws", "dev", "origin")
    assert v0 == ids.visitor_contact_id("ws", "dev", "origin")
    assert v0 != ids.visitor_contact_id("ws", "dev", "logout-1")
    assert v0 != ids.user_contact_id("ws", "dev")


def test_ids_cannot_collide_by_shifting_separators() -> None:
    assert ids.user_contact_id("a|b", "c") != ids.user_contact_id("a", "b|c")


def test_pseudonym_is_deterministic_and_well_formed() -> None:
    name = ids.pseudonym("abc", "Paris")
    assert name == ids.pseudonym("abc", "Paris")
    colour, noun, rest = name.split(" ", 2)
    assert colour in ids.COLOURS and noun in ids.NOUNS and rest == "from Paris"
    assert ids.pseudonym("abc", None) == f"{colour} {noun}"
