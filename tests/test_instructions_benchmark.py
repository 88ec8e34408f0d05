"""benchmarks/instructions.py's reading of callgrind_annotate (the callgrind runs themselves take a
minute and are not a test)."""

from __future__ import annotations

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from instructions import totals  # noqa: E402

ANNOTATED = """\
--------------------------------------------------------------------------------
Ir                     file:function
--------------------------------------------------------------------------------
1,956,712,009 (100.0%)  PROGRAM TOTALS
10,112,432,994 (516.8%)  /tmp/python-build/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/lib/libpython3.11.so.1.0]
   226,393,188 (11.57%)  ???:sqlite3_step [/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6]
   226,390,001 (11.57%)  ???:sqlite3_step'2 [/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6]
   139,310,730 ( 7.12%)  /tmp/python-build/Modules/_sqlite/connection.c:pysqlite_connection_execute [/x.so]
    56,134,133 ( 2.87%)  /tmp/python-build/Modules/gcmodule.c:gc_collect_main [/lib/libpython3.11.so.1.0]
     1,000,000 ( 0.05%)  /tmp/python-build/Modules/gcmodule.c:gc_collect_main_helper [/lib/libpython3.11.so.1.0]
"""


def test_totals_takes_the_program_total_and_each_parts_largest_inclusive_count() -> None:
    assert totals(ANNOTATED) == {"total": 1_956_712_009, "sqlite": 226_393_188, "gc": 56_134_133}


def test_totals_of_a_text_without_the_parts_are_zero() -> None:
    assert totals("5 (100.0%)  PROGRAM TOTALS\n") == {"total": 5, "sqlite": 0, "gc": 0}
