"""Simple baselines that show what the network adds."""
