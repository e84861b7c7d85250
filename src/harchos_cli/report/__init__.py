"""`harchos report`: totals over jobs' ledgers, and their terminal, JSON and HTML forms.

`summary` is the arithmetic and the JSON; `terminal` and `html` only present it.
"""
