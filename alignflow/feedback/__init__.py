"""Preference collection: comparisons shown to labelers (rules, reward models, LLM judges, people,
outside annotation teams), their answers as preference records, the pairs those imply, agreement
between labelers, and the feedback store that retraining reads."""
