"""A rule judge for the files pipeline test, standing in for a user's own: it reads no demo column."""


def near_twelve_words(prompts, completions, **columns) -> list[float]:
    """1 for a 12-word reply, falling by 1/12 per word more or fewer."""
    return [1.0 - abs(len(text.split()) - 12) / 12 for text in completions]


def says_help(prompts, completions, **columns) -> list[float]:
    """A stand-in refusal classifier (a user's own, for `{kind: safety, classifier: ...}`): 1 for
    a reply containing the word "help", else 0. The micro models' replies are word salad that
    sometimes does."""
    return [float("help" in text.lower().split()) for text in completions]
