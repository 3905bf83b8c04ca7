"""Which runs of a grid train together: the cohorts and their jobs' rule names."""
import pytest

from dyn.errors import UserError
from dyn.grid.runs import RunSpec, cohorts, rule_name


def _grid():
    return [RunSpec("softkd", "none", 0.0, 20, 0), RunSpec("spectral", "First1", 0.2, 20, 0),
            RunSpec("softkd", "none", 0.0, 40, 0), RunSpec("spectral", "Last1", 0.2, 20, 1),
            RunSpec("projector", "Last1", 0.2, 20, 0), RunSpec("spectral", "Last1", 0.2, 40, 0)]


def test_runs_of_one_epoch_count_and_seed_form_a_cohort_in_config_order():
    jobs = cohorts(_grid())
    assert {k: [s.run_id for s in v] for k, v in jobs.items()} == {
        "cohort_e20_s0": ["softkd_none_b0_e20_s0", "spectral_First1_b0.2_e20_s0", "projector_Last1_b0.2_e20_s0"],
        "cohort_e40_s0": ["softkd_none_b0_e40_s0", "spectral_Last1_b0.2_e40_s0"],
        "cohort_e20_s1": ["spectral_Last1_b0.2_e20_s1"],
    }


def test_across_epochs_the_runs_of_one_seed_form_a_cohort():
    jobs = cohorts(_grid(), across_epochs=True)
    assert {k: [s.run_id for s in v] for k, v in jobs.items()} == {
        "cohort_s0": ["softkd_none_b0_e20_s0", "spectral_First1_b0.2_e20_s0", "softkd_none_b0_e40_s0",
                      "projector_Last1_b0.2_e20_s0", "spectral_Last1_b0.2_e40_s0"],
        "cohort_s1": ["spectral_Last1_b0.2_e20_s1"],
    }
    assert list(cohorts(_grid(), size=3, across_epochs=True)) == ["cohort_s0_1of2", "cohort_s0_2of2", "cohort_s1"]


def test_the_cap_splits_a_cohort_into_the_fewest_near_equal_parts():
    runs = [RunSpec("spectral", f"Last{k}", 0.2, 20, 0) for k in range(1, 8)]
    jobs = cohorts(runs, size=3)
    assert {k: len(v) for k, v in jobs.items()} == {"cohort_e20_s0_1of3": 2, "cohort_e20_s0_2of3": 3,
                                                    "cohort_e20_s0_3of3": 2}
    assert [s for part in jobs.values() for s in part] == runs
    assert list(cohorts(runs, size=7)) == ["cohort_e20_s0"]
    with pytest.raises(UserError, match="cohort_size must be at least 1"):
        cohorts(runs, size=0)


def test_without_cohorts_every_run_is_its_own_job():
    jobs = cohorts(_grid(), together=False)
    assert all(len(runs) == 1 and runs[0].run_id == job for job, runs in jobs.items()) and len(jobs) == 6


def test_rule_names_are_identifiers():
    assert rule_name("cohort_e20_s0_1of2") == "distill_cohort_e20_s0_1of2"
    assert rule_name("spectral_First1+Last1_b0.2_e20_s0").isidentifier()
