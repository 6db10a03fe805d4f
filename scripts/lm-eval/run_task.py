"""Runs one lm-evaluation-harness task through lm_eval.simple_evaluate and writes its
metrics and every request's log-likelihood as JSON: the test compares our server
(model local-completions) with lm-eval's own `hf` model on the same folder.

  python run_task.py --tasks-dir DIR --task NAME --model hf|local-completions --model-args A=B,... --out FILE
"""
import argparse
import json
import logging

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks-dir", required=True, help="folder with the task YAML")
    p.add_argument("--task", required=True)
    p.add_argument("--model", required=True, choices=["hf", "local-completions"])
    p.add_argument("--model-args", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    res = simple_evaluate(
        model=a.model,
        model_args=a.model_args,
        tasks=[a.task],
        task_manager=TaskManager(include_path=a.tasks_dir),
        log_samples=True,
        batch_size=1,
        device="cpu",
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
    )
    requests = []
    for s in res["samples"][a.task]:
        # One loglikelihood request per choice: resps[i] = [(logprob sum, is_greedy)].
        for i, r in enumerate(s["resps"]):
            requests.append({"doc_id": s["doc_id"], "choice": i, "loglikelihood": float(r[0][0]), "greedy": bool(r[0][1])})
    metrics = {k: v for k, v in res["results"][a.task].items() if isinstance(v, (int, float))}
    with open(a.out, "w") as f:
        json.dump({"metrics": metrics, "requests": requests, "n_samples": len(res["samples"][a.task])}, f)


if __name__ == "__main__":
    main()
