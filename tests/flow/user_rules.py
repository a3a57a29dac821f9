"""A rule judge for the files pipeline test, standing in for a user's own: it reads no demo column."""


def near_twelve_words(prompts, completions, **columns) -> list[float]:
    """1 for a 12-word reply, falling by 1/12 per word more or fewer."""
    return [1.0 - abs(len(text.split()) - 12) / 12 for text in completions]
