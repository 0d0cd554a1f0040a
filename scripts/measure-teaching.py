#!/usr/bin/env python3
"""Teaching the demo model ten new dishes through a running server (scripts/measure-teaching.sh).

Sends ten pictures of each new dish as examples, measures recognition latency idle and
while the fine-tune runs, promotes the new version, and recognises pictures the run never
saw (other renderings of the same drawing styles, and two styles it never saw) plus one
picture of each dish the demo model already knew. Prints a Markdown report and writes
every answer as JSON.
"""

import argparse
import base64
import csv
import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None, content_type="application/json"):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def rows(csv_path):
    folder = os.path.dirname(csv_path)
    with open(csv_path) as f:
        return [(r["name"], os.path.join(folder, r["path"]), r) for r in csv.DictReader(f)]


def recognise(base, path):
    with open(path, "rb") as f:
        status, answer = call(base, "POST", "/api/v1/recognize?n=8", f.read(), content_type="image/png")
    if status != 200:
        raise RuntimeError(f"recognize {path}: {status} {answer}")
    return (answer.get("best") or {}).get("dish") or ""


def accuracy(base, pictures):
    """Per dish: pictures named right / pictures; and every answer."""
    per_dish, answers = {}, []
    for dish, path, _ in pictures:
        said = recognise(base, path)
        right, total = per_dish.get(dish, (0, 0))
        per_dish[dish] = (right + (said == dish), total + 1)
        answers.append({"dish": dish, "path": path, "said": said})
    return per_dish, answers


def share(per_dish):
    right = sum(r for r, _ in per_dish.values())
    total = sum(t for _, t in per_dish.values())
    return right / max(total, 1), total


def latency_loop(base, path, stop, out):
    while not stop.is_set():
        start = time.monotonic()
        recognise(base, path)
        out.append(time.monotonic() - start)


def quantiles(values):
    values = sorted(values)
    if not values:
        return {"n": 0}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"n": len(values), "p50": statistics.median(values), "p95": pick(0.95), "max": values[-1]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--data", required=True, help="folder with teach/, test-same/, test-new/")
    parser.add_argument("--known", required=True, help="a CSV of pictures of dishes the model knew")
    parser.add_argument("--per-dish", type=int, default=10)
    parser.add_argument("--settings", required=True, help="the fine-tune's settings as JSON")
    parser.add_argument("--out", required=True)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    base, token = args.base, args.token

    tests = {name: rows(os.path.join(args.data, name, "food.csv")) for name in ("test-same", "test-new")}
    with open(args.known) as f:
        known = [(r["name"], os.path.join(os.path.dirname(args.known), r["path"]), r) for r in csv.DictReader(f)]
    # One picture of each known dish (its first rendering in the first style listed).
    seen, known_pictures = set(), []
    for dish, path, row in known:
        if dish not in seen and "/twemoji/" in path and path.endswith("-0.png"):
            seen.add(dish)
            known_pictures.append((dish, path, row))
    tests["known"] = known_pictures

    report = {"label": args.label, "settings": json.loads(args.settings)}
    report["before"] = {name: accuracy(base, pictures) for name, pictures in tests.items()}

    # Ten examples of each new dish, as the app sends them.
    counts = {}
    for dish, path, row in rows(os.path.join(args.data, "teach", "food.csv")):
        if counts.get(dish, 0) >= args.per_dish:
            continue
        counts[dish] = counts.get(dish, 0) + 1
        with open(path, "rb") as f:
            photo = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        body = {"photo": photo, "dish": dish, "protein_g": float(row["protein"]), "fat_g": float(row["fat"]),
                "carbs_g": float(row["carbs"]), "kcal": float(row["kcal"]), "consent": "measurement"}
        status, answer = call(base, "POST", "/api/v1/examples", body)
        assert status == 201, (status, answer)
    report["examples"] = counts

    probe = tests["known"][0][1]
    idle = []
    for _ in range(20):
        start = time.monotonic()
        recognise(base, probe)
        idle.append(time.monotonic() - start)
    report["latency_idle_s"] = quantiles(idle)

    status, run = call(base, "POST", "/api/v1/finetune", json.loads(args.settings), token)
    assert status == 202, (status, run)
    started = time.monotonic()
    stop, during = threading.Event(), []
    loader = threading.Thread(target=latency_loop, args=(base, probe, stop, during))
    loader.start()
    while True:
        time.sleep(1)
        _, runs = call(base, "GET", "/api/v1/finetune", token=token)
        run = runs["runs"][-1]
        if run["status"] != "running":
            break
    stop.set()
    loader.join()
    report["wall_s"] = time.monotonic() - started
    report["run"] = run
    report["latency_during_s"] = quantiles(during)
    assert run["status"] == "finished", run

    status, models = call(base, "POST", f"/api/v1/models/{run['version']}/promote", token=token)
    assert status == 200, (status, models)
    report["after"] = {name: accuracy(base, pictures) for name, pictures in tests.items()}
    with open(args.out, "w") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)

    print(f"\n### {args.label}\n")
    print(f"settings: `{args.settings}`; {sum(counts.values())} examples of {len(counts)} dishes"
          f" + {run['base_rows']} base rows; {run['total_steps']} steps in {run['train_seconds']:.0f} s"
          f" of training ({report['wall_s']:.0f} s from start to finish, recognitions served throughout)\n")
    print("| pictures | before | after |\n|---|---|---|")
    for name, what in (("test-same", "new dishes, drawing styles it was taught (other renderings)"),
                       ("test-new", "new dishes, two drawing styles it never saw"),
                       ("known", "dishes the demo model knew (one picture each)")):
        (b, n), (a, _) = share(report["before"][name][0]), share(report["after"][name][0])
        print(f"| {what} ({n}) | {b:.0%} | {a:.0%} |")
    print("\n| new dish | before (taught styles) | after (taught styles) | after (unseen styles) |\n|---|---|---|---|")
    for dish in counts:
        cell = lambda table: "{}/{}".format(*table.get(dish, (0, 0)))
        print(f"| {dish} | {cell(report['before']['test-same'][0])} | {cell(report['after']['test-same'][0])}"
              f" | {cell(report['after']['test-new'][0])} |")
    idle_q, during_q = report["latency_idle_s"], report["latency_during_s"]
    print(f"\nrecognition latency (one client, n=8): idle p50 {idle_q['p50']:.2f} s, p95 {idle_q['p95']:.2f} s;"
          f" during the fine-tune p50 {during_q['p50']:.2f} s, p95 {during_q['p95']:.2f} s, max {during_q['max']:.2f} s"
          f" ({during_q['n']} recognitions)")


if __name__ == "__main__":
    main()
