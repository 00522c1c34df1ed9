from harness.tasks.cloze import write_yamls

for path in write_yamls():
    print(path)
