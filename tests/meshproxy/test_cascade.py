"""The cascade test of issue 5 (scenario in :mod:`cascade`): C hangs behind B; A's
*other* route keeps its success rate and throughput with route timeouts and breakers on
the proxies, and starves without them.

Counts, not wall-clock times, are asserted: A has 8 workers alternating /b and /other
for 2 s. The bound stated: with protection /other completes at least half as many
requests as in the healthy baseline, all successful; without it, fewer than a tenth
(each worker is stuck on a /b call that never returns). The measured numbers are in
``loadtests/README.md`` (``python -m loadtests.resilience_bench cascade``).
"""

from __future__ import annotations

from cascade import run_phase


async def test_breakers_and_timeouts_stop_a_hanging_service_from_cascading() -> None:
    baseline = await run_phase(protected=False, c_hangs=False)
    protected = await run_phase(protected=True, c_hangs=True)
    unprotected = await run_phase(protected=False, c_hangs=True)
    base_other = baseline["other"].ok
    assert base_other > 50, baseline
    # with breakers and timeouts: the other route keeps (at least half of) its rate and
    # every one of its requests succeeds; the /b route fails fast instead of hanging
    assert protected["other"].ok >= 0.5 * base_other, (protected, baseline)
    assert protected["other"].failed == 0
    assert protected["b"].failed > 0
    # without them: A's workers are all stuck on /b, the other route starves
    assert unprotected["other"].ok < 0.1 * base_other, (unprotected, baseline)
