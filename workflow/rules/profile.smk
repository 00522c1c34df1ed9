# Profile jobs: a target built from a measurement instead of run records declares it in its module
# (`profile_job(config, exp)` and `files(config, exp)`, harness/reports/__init__.py); each gets one
# rule, profile_<target>. Table 1's: ONE job measures every method of experiments.table1 side by
# side against the frozen floor (same model, same batches, round-robin rounds;
# harness.profile.profile_table1).
for _target in [t for t in TARGETS if reports.target(t).has("profile_job")]:
    _job = reports.target(_target).module.profile_job(CFG, reports.target(_target).exp(CFG))

    rule:
        name:
            f"profile_{_target}"
        input:
            model=model_marker(_job["model"]),
            data=hc.train_set_path(CFG, _job["dataset"]),
        output:
            reports.files(CFG, _target),
        log:
            f"{LOGS}/profile/{_job['model']}/{_target}.log",
        benchmark:
            f"{BENCH}/profile/{_job['model']}/{_target}.tsv"
        params:
            runs=_job["runs"],
            settings=_job["settings"],
        threads: _job["threads"]
        resources:
            mem_mb=mem("profile"),
            runtime=runtime("profile"),
            gpu=min(EXE["gpus"], 1),
        conda:
            ENV
        script:
            "../scripts/profile_step.py"
