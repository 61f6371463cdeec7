"""Names of the attributes lepton-search stores on Optuna studies and trials.

Study user attributes hold the study file, objective names, the baseline, frontier
re-measurements and the hypervolume history; trial user attributes hold each trial's config,
measurements and, for failures, the reason.
"""

STUDY_SPEC_ATTR = "lepton:spec"
STUDY_BASELINE_ATTR = "lepton:baseline"
STUDY_OBJECTIVES_ATTR = "lepton:objectives"
STUDY_HYPERVOLUME_ATTR = "lepton:hypervolume"
#: The CPU the study's space made its hardware decisions for (``spaces/_hardware.py``), recorded
#: when the study is created; studies without it were created before it was recorded.
STUDY_HARDWARE_ATTR = "lepton:hardware"
REMEASURED_PREFIX = "lepton:remeasured:"
#: Where the best frontier configuration's speed comes from: each technique alone, measured in one window.
STUDY_FACTORS_ATTR = "lepton:factors"
#: The task's accuracy resolution (``Task.accuracy_resolution``), recorded by each run, for tie groups.
STUDY_ACCURACY_RESOLUTION_ATTR = "lepton:accuracy_resolution"
#: On a trial the driver added to evaluate a tie group's simpler core: the group leader's number.
TIE_CORE_OF = "tie_core_of"

FAIL_REASON = "fail_reason"
REQUEUED = "requeued"
#: On a repeated proposal served from the cache: the number of the trial that was evaluated.
DUPLICATE_OF = "duplicate_of"
# Trial user attributes: the driver that asked for the trial (``storage.StudyCoordination``), and,
# on a proposal waiting for another driver's evaluation of its configuration, that trial's number.
DRIVER = "driver"
WAITS_FOR = "waits_for"
