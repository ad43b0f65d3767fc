import pytest

from wan2.data.rankjump import TEMPLATES, RankJumpConfig, caption_for, make_clip
from wan2.prompts import TONES, event_to_prompt


def test_default_prompt_is_the_first_training_caption():
    cases = [
        ({"event": "rank_up", "user": "Alice", "old_rank": 3, "new_rank": 2}, ("rank_up", 3, 2)),
        ({"event": "rank_down", "old_rank": 1, "new_rank": 4}, ("rank_down", 1, 4)),
        ({"event": "hold"}, ("hold", 1, 1)),
        ({"event": "hold", "rank": 3}, ("hold", 3, 3)),
        ({"event": "hold", "new_rank": 2}, ("hold", 2, 2)),
        ({"event": "first_entry", "new_rank": 5}, ("first_entry", None, 5)),
    ]
    cfg = RankJumpConfig()
    for event, (kind, old, new) in cases:
        prompt = event_to_prompt(event)
        assert prompt == caption_for(kind, old, new, "green", template=0)
        # the exact caption a training clip of the same event carries
        assert prompt == make_clip(cfg, kind, old, new, "green", template=0).caption
        assert "Alice" not in prompt


def test_colour_names_and_hex():
    e = {"event": "rank_up", "old_rank": 4, "new_rank": 1}
    assert event_to_prompt({**e, "color": "Blue"}) == "the blue row climbs from #4 to #1"
    assert event_to_prompt({**e, "colour": "#4CAF50"}) == "the green row climbs from #4 to #1"
    assert event_to_prompt({**e, "color": "#FF8000"}) == "the orange row climbs from #4 to #1"


def test_tone_picks_a_template_and_appends_its_phrase_only_when_given():
    e = {"event": "rank_up", "old_rank": 5, "new_rank": 1, "color": "gold"}
    prompt = event_to_prompt(e, tone="comeback")
    core = caption_for("rank_up", 5, 1, "gold", template=TONES["comeback"].template)
    assert prompt == f"{core}, {TONES['comeback'].phrase}"
    assert (
        event_to_prompt({"event": "hold"}, tone="defended")
        == "leaderboard: green bar defends rank 1, rank defended"
    )
    assert event_to_prompt({"event": "first_entry", "new_rank": 3}, tone="welcome").startswith(
        "leaderboard: new green bar slides in at rank 3"
    )
    # every tone's caption is one of the training templates
    for name, tone in TONES.items():
        for kind in tone.events:
            event = {
                "event": kind,
                "old_rank": 2 if kind != "rank_down" else 1,
                "new_rank": 1 if kind != "rank_down" else 2,
            }
            text = event_to_prompt(event, tone=name)
            assert any(
                text.startswith(t.format(colour="green", old=event["old_rank"], new=event["new_rank"]))
                for t in TEMPLATES[kind]
            ), (name, kind, text)
    with pytest.raises(ValueError, match="^tone:"):
        event_to_prompt({"event": "rank_down", "old_rank": 1, "new_rank": 2}, tone="comeback")
    with pytest.raises(ValueError, match="^tone:"):
        event_to_prompt({"event": "hold"}, tone="sarcastic")


def test_style_words_and_user_only_when_asked():
    e = {"event": "rank_up", "user": "Alice", "old_rank": 3, "new_rank": 2}
    assert event_to_prompt(e, style="neon glow") == "the green row climbs from #3 to #2, neon glow"
    assert event_to_prompt(e, style=["neon", "glossy"]) == "the green row climbs from #3 to #2, neon, glossy"
    assert event_to_prompt(e, include_user=True) == "the green row climbs from #3 to #2, for Alice"
    with pytest.raises(ValueError, match="^user:"):
        event_to_prompt({"event": "hold"}, include_user=True)


@pytest.mark.parametrize(
    "event, field",
    [
        ({"event": "rank_sideways", "old_rank": 2, "new_rank": 1}, "event"),
        ({"old_rank": 2, "new_rank": 1}, "event"),
        ({"event": "rank_up", "new_rank": 1}, "old_rank"),
        ({"event": "rank_up", "old_rank": 3}, "new_rank"),
        ({"event": "first_entry"}, "new_rank"),
        ({"event": "rank_up", "old_rank": 2, "new_rank": 0}, "new_rank"),
        ({"event": "hold", "rank": -1}, "rank"),
        ({"event": "rank_down", "old_rank": 2, "new_rank": 1_000_001}, "new_rank"),
        ({"event": "rank_up", "old_rank": 7.0, "new_rank": 1}, "old_rank"),
        ({"event": "rank_up", "old_rank": 7.5, "new_rank": 1}, "old_rank"),
        ({"event": "rank_up", "old_rank": False, "new_rank": 1}, "old_rank"),
        ({"event": "rank_up", "old_rank": -7, "new_rank": 1}, "old_rank"),
        ({"event": "hold", "rank": 0}, "rank"),
        ({"event": "first_entry", "new_rank": 10**7}, "new_rank"),
        ({"event": "rank_up", "old_rank": 2, "new_rank": 3}, "new_rank"),
        ({"event": "rank_up", "old_rank": 2, "new_rank": 2}, "new_rank"),
        ({"event": "rank_down", "old_rank": 4, "new_rank": 1}, "new_rank"),
        ({"event": "rank_up", "old_rank": "two", "new_rank": 1}, "old_rank"),
        ({"event": "rank_up", "old_rank": 3, "new_rank": 1, "color": "gray"}, "color"),
        ({"event": "rank_up", "old_rank": 3, "new_rank": 1, "colour": "#808080"}, "colour"),
    ],
)
def test_validation_names_the_field(event, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        event_to_prompt(event)


def test_board_size_follows_rows():
    e = {"event": "first_entry", "new_rank": 7}
    assert event_to_prompt(e, rows=8) == "a new green row enters the leaderboard at #7"
    assert (
        event_to_prompt(e) == "a new green row enters the leaderboard at #7, on the board at #5, ranks 3 to 7"
    )


@pytest.mark.parametrize(
    "event, prompt",
    [  # the real ranks, then (beyond the board's 5 rows) the on-screen slots and the window's ranks
        (
            {"event": "rank_up", "old_rank": 7, "new_rank": 3},
            "the green row climbs from #7 to #3, on the board #5 to #1, ranks 3 to 7",
        ),
        (  # a jump longer than the window enters from below (slot 6) and ends on the top row
            {"event": "rank_up", "old_rank": 128, "new_rank": 97},
            "the green row climbs from #128 to #97, on the board #6 to #1, ranks 97 to 101",
        ),
        (  # a long drop enters from above (slot 0) and ends on the bottom row
            {"event": "rank_down", "old_rank": 3, "new_rank": 40},
            "the green row drops from #3 to #40, on the board #0 to #5, ranks 36 to 40",
        ),
        (
            {"event": "first_entry", "new_rank": 40},
            "a new green row enters the leaderboard at #40, on the board at #5, ranks 36 to 40",
        ),
        (
            {"event": "hold", "rank": 12},
            "the green row holds #12 with a pulse, on the board at #5, ranks 8 to 12",
        ),
        (
            {"event": "rank_up", "old_rank": "7", "new_rank": 5},
            "the green row climbs from #7 to #5, on the board #5 to #3, ranks 3 to 7",
        ),
        (
            {"event": "rank_up", "old_rank": 5, "new_rank": 1},
            "the green row climbs from #5 to #1",
        ),  # today's board
    ],
)
def test_any_rank_keeps_the_real_ranks_and_adds_the_window(event, prompt):
    assert event_to_prompt(event) == prompt


def test_absurd_ranks_are_one_line_errors_naming_the_field():
    for value, word in [
        (0, "below 1"),
        (-3, "below 1"),
        (10**6 + 1, "above 1,000,000"),
        (2.5, "integer"),
        (True, "integer"),
        ("1e3", "integer"),
        (None, "missing"),
    ]:
        with pytest.raises(ValueError, match=f"^old_rank: .*{word}") as err:
            event_to_prompt({"event": "rank_up", "old_rank": value, "new_rank": 1})
        assert "\n" not in str(err.value)
    assert event_to_prompt({"event": "rank_up", "old_rank": 10**6, "new_rank": 999_999}).startswith(
        "the green row climbs from #1000000 to #999999, on the board #5 to #4"
    )
