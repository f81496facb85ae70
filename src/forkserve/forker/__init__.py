"""The forker: the process that forks fork mode's connection processes.

Started fresh (an exec of the interpreter, never a fork of the supervisor) so that
what it forks carries only what a connection's process needs; see forker.process.
"""
