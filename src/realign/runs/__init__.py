"""The runs: what `realign eval`, `fix` and `bench` resolve (Setting, Session), do (evaluation,
fix, bench, resume) and write (report, leaderboard, model card, push to the Hub)."""
