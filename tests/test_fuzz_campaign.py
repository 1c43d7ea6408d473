"""The campaign summary (``tests/fuzz/campaign.py``): what it says about the last hour must be what the log says.

A synthetic log in the format ``run`` writes (``<epoch> <libFuzzer line>``), with a crash before the last
hour and coverage growth inside it, so a summary that reads the wrong window or drops a crash fails.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("fuzz_campaign", Path(__file__).parent / "fuzz" / "campaign.py")
campaign = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = campaign  # dataclasses look their module up while the class is built
_SPEC.loader.exec_module(campaign)

T0 = 1_800_000_000


def _log(crash_at=None):
    lines = [f"START {T0} corpus 3",
             f"{T0 + 5} INFO: Instrumenting detconvert",
             f"{T0 + 10} #2\tINITED cov: 100 ft: 400 corp: 3/1Kb exec/s: 0 rss: 60Mb",
             f"{T0 + 600} #1000\tNEW    cov: 110 ft: 450 corp: 4/1Kb lim: 4 exec/s: 2 rss: 60Mb L: 3/3 MS: 1 ChangeBit-",
             f"{T0 + 1800} #4096\tpulse  cov: 110 ft: 450 corp: 4/1Kb lim: 4 exec/s: 2 rss: 60Mb",
             # the last hour starts at T0 + 3000: executions there are interpolated between 4096 and 8192
             f"{T0 + 4200} #8192\tpulse  cov: 110 ft: 450 corp: 4/1Kb lim: 4 exec/s: 2 rss: 60Mb",
             f"{T0 + 5000} #9000\tNEW    cov: 112 ft: 455 corp: 5/1Kb lim: 4 exec/s: 2 rss: 60Mb L: 3/3 MS: 1 ChangeBit-",
             f"{T0 + 6590} #12000\tDONE   cov: 112 ft: 455 corp: 5/1Kb lim: 4 exec/s: 2 rss: 60Mb",
             f"{T0 + 6590} stat::number_of_executed_units: 12001",
             f"END {T0 + 6600} rc=0 cpu=3000"]
    if crash_at is not None:
        lines.insert(-1, f"{T0 + crash_at} ==9== ERROR: libFuzzer: deadly signal")
        lines.insert(-1, f"{T0 + crash_at} artifact_prefix='/w/crash-x-'; Test unit written to /w/crash-x-abc")
    return lines


def test_last_hour_is_read_from_the_log():
    summary = campaign.summarise_log("weights", _log(), window_s=3600)
    assert summary.seconds == 6600 and summary.executions == 12001 and summary.cpu_seconds == 3000
    assert (summary.cov_start, summary.cov_end, summary.ft_start, summary.ft_end) == (100, 112, 400, 455)
    assert summary.last_growth_s == 5000
    assert summary.window_s == 3600
    # 4096 + (3000 - 1800) / (4200 - 1800) * (8192 - 4096) = 6144 executions at the window's start
    assert summary.window_executions == 12001 - 6144
    assert (summary.window_cov_gain, summary.window_ft_gain) == (2, 5)
    assert summary.crashes == [] and summary.clean_window


@pytest.mark.parametrize("crash_at, in_window", [(2000, False), (6000, True)])
def test_crashes_are_placed_in_or_before_the_window(crash_at, in_window):
    summary = campaign.summarise_log("weights", _log(crash_at), window_s=3600)
    assert summary.crashes == ["/w/crash-x-abc"]
    assert summary.clean_window is (not in_window)
    table = campaign.format_table([summary])
    assert ("1 crash(es)" in table) is in_window and ("no crash" in table) is (not in_window)


def test_a_run_shorter_than_the_window_reports_its_own_length():
    summary = campaign.summarise_log("cfg", _log(), window_s=4 * 3600)
    assert summary.window_s == 6600 and summary.window_executions == 12001 - 2
    assert summary.window_cov_gain == 12


def test_a_log_without_status_lines_is_refused():
    with pytest.raises(ValueError, match="no libFuzzer status line"):
        campaign.summarise_log("config", [f"START {T0}", f"{T0 + 1} INFO: Instrumenting yaml", f"END {T0 + 2}"])


def test_summarise_command_exits_1_when_a_target_crashed(tmp_path, capsys):
    clean, crashed = tmp_path / "weights-1.log", tmp_path / "cfg-1.log"
    clean.write_text("\n".join(_log()) + "\n")
    crashed.write_text("\n".join(_log(6000)) + "\n")
    assert campaign.main(["summarise", str(clean)]) == 0
    assert campaign.main(["summarise", str(clean), str(crashed)]) == 1
    out = capsys.readouterr().out
    assert "weights" in out and "cfg" in out
