"""Forked snapshots: the agent forks, a frozen copy of the target walks every object and streams
compact records; everything that interprets them (types, growth, holders, dominators, chains)
runs here, in the CLI, over the records.

``records`` reads the stream (format 1, written by ``agent._snap_*``), ``collect`` drives a run
(headroom check, FIFOs, the walker's lifetime), ``heap`` computes, ``state`` keeps growth
baselines outside the target.
"""
