"""Forward-only evolution-strategies training (AbdulQader et al., arXiv 2103.14007)."""
