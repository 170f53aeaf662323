"""Export a deployed model as C (inference and on-device training)."""
