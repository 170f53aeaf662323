"""On-device training methods, one module per method behind one protocol (see DESIGN.md).

The methods arrive with their issues: forward-only evolution strategies, low-rank
Kronecker-sum accumulation, and fully quantized training with partial updates.
"""
