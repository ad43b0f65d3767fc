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
        ({"event": "rank_down", "old_rank": 2, "new_rank": 6}, "new_rank"),
        ({"event": "rank_up", "old_rank": 9, "new_rank": 1}, "old_rank"),
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
    with pytest.raises(ValueError, match="^new_rank:"):
        event_to_prompt(e)
    assert event_to_prompt(e, rows=8) == "a new green row enters the leaderboard at #7"
