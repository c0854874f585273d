"""Benchmarks: edgecrab side by side with a quick-start ``dingtalk-stream`` bot and the raw protocol limit.

``python -m bench`` runs every scenario (a few minutes), ``python -m bench --smoke`` a seconds-long version
that only proves the machinery works. Both print a markdown table and write ``bench/results/latest.json``.

How a message flows through a run: :class:`~edgecrab.testing.fakedingtalk.FakeDingTalk`, the measuring
instrument, runs in a process of its own (:mod:`bench.fakeproc`, driven by :class:`bench.fakes.BenchFake`
from the orchestrating process), a load driver on the fake's loop in that process pushes frames and
watches acks and outbound replies (:mod:`bench.drive`), the contender is a subprocess
(:mod:`bench.contenders`: ``edgecrab gateway start``, :mod:`bench.sdk_bot`, :mod:`bench.raw_bot`), the
"agent" is the echo agent or a fake OpenAI-compatible server with a fixed delay in another subprocess
(:mod:`bench.llm`).
:mod:`bench.scenarios` composes these into the five scenarios of issue 8 and :mod:`bench.report` judges
each line against its goal.
"""
