"""From an agent's answer to messages in DingTalk, in order and once.

:mod:`~edgecrab.replies.format` renders the answer and turns it into ledger rows;
:mod:`~edgecrab.replies.chunking` splits long text at natural boundaries (with
:mod:`~edgecrab.replies.textscan` finding code fences, tables and grapheme boundaries in one pass);
:mod:`~edgecrab.replies.delivery` records the rows in the store's ledger and sends them strictly in order
(:mod:`~edgecrab.replies.resplit` splitting again a chunk DingTalk refuses as too long).
"""
