"""Make the embedded default fine-tuning task: rewrite an English date in ISO 8601 form (YYYY-MM-DD).

Deterministic (fixed seed), no download: writes llmlite/files/dates_train.jsonl and dates_test.jsonl,
chat records `{"messages": [user, assistant]}`. The test dates are drawn from years the training split
never uses, so the held-out split checks the format is learned, not the examples memorised.
Usage: python scripts/make_dates.py
"""
import json, random
from datetime import date, timedelta
from pathlib import Path

ORD = {1: 'st', 2: 'nd', 3: 'rd', 21: 'st', 22: 'nd', 23: 'rd', 31: 'st'}
FORMS = [lambda d: f"{d:%B} {d.day}, {d.year}", lambda d: f"{d.day} {d:%B} {d.year}", lambda d: f"{d:%b} {d.day}{ORD.get(d.day, 'th')}, {d.year}",
         lambda d: f"the {d.day}{ORD.get(d.day, 'th')} of {d:%B}, {d.year}", lambda d: f"{d:%A}, {d:%B} {d.day}, {d.year}",
         lambda d: f"{d:%B} {d.day}{ORD.get(d.day, 'th')} {d.year}"]
ASK = ["Write {} in ISO 8601 format.", "Convert the date {} to YYYY-MM-DD.", "What is {} as an ISO date?", "Give {} in the form YYYY-MM-DD."]

def record(rng, years):
    d = date(rng.choice(years), 1, 1) + timedelta(days=rng.randrange(365))
    q = rng.choice(ASK).format(rng.choice(FORMS)(d)) + " Reply with the date only."
    return dict(messages=[dict(role='user', content=q), dict(role='assistant', content=d.isoformat())])

def main(out=Path(__file__).parent.parent/'llmlite'/'files', n_train=2000, n_test=100, seed=0):
    rng = random.Random(seed)
    years = list(range(1900, 2100))
    test_years = set(rng.sample(years, 20))
    train = [record(rng, [y for y in years if y not in test_years]) for _ in range(n_train)]
    test = [record(rng, sorted(test_years)) for _ in range(n_test)]
    out.mkdir(parents=True, exist_ok=True)
    for name, rs in (('dates_train', train), ('dates_test', test)):
        (out/f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rs))
    print(f"wrote {len(train)} training and {len(test)} held-out records to {out}")

if __name__ == '__main__': main()
