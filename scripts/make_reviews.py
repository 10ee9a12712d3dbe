"""Make the embedded classification task: is a short product review positive or negative?

Deterministic (fixed seed), no download: writes llmlite/files/reviews_train.jsonl and reviews_test.jsonl, records
`{"text", "label"}` with label "positive" or "negative". The held-out split describes things with adjectives
and verbs the training split never uses, so a classifier passes it only by drawing on what the pretrained
encoder knows about words, not by memorising the training words. A fresh classifier head is at chance (50%).
Usage: python scripts/make_reviews.py
"""
import json, random
from pathlib import Path

THINGS = ['phone', 'laptop', 'blender', 'jacket', 'book', 'movie', 'hotel room', 'restaurant', 'headset', 'chair', 'camera', 'backpack',
          'coffee maker', 'game', 'album', 'tent', 'bicycle', 'lamp', 'vacuum', 'watch']
GOOD = dict(train=['great', 'excellent', 'wonderful', 'fantastic', 'lovely', 'superb', 'delightful', 'brilliant', 'pleasant', 'amazing'],
            test=['terrific', 'marvelous', 'outstanding', 'splendid', 'fabulous', 'impressive'])
BAD = dict(train=['terrible', 'awful', 'horrible', 'dreadful', 'poor', 'disappointing', 'useless', 'lousy', 'nasty', 'broken'],
           test=['abysmal', 'atrocious', 'pathetic', 'miserable', 'shoddy', 'appalling'])
LIKE = dict(train=['love', 'adore', 'enjoy', 'recommend'], test=['cherish', 'treasure'])
HATE = dict(train=['hate', 'regret buying', 'dislike', 'returned'], test=['despise', 'loathe'])
FORMS = ["The {thing} is {adj}.", "This {thing} was {adj}.", "What a {adj} {thing}!", "Honestly, a {adj} {thing}.",
         "I {verb} this {thing}.", "I {verb} the {thing}, it is {adj}.", "My new {thing} turned out {adj}.", "{Adj} {thing}, would say the same again."]

def record(rng, split):
    pos = rng.random() < 0.5
    adj = rng.choice((GOOD if pos else BAD)[split])
    text = rng.choice(FORMS).format(thing=rng.choice(THINGS), adj=adj, Adj=adj.capitalize(), verb=rng.choice((LIKE if pos else HATE)[split]))
    return dict(text=text, label='positive' if pos else 'negative')

def main(out=Path(__file__).parent.parent/'llmlite'/'files', n_train=320, n_test=100, seed=0):
    rng = random.Random(seed)
    train = [record(rng, 'train') for _ in range(n_train)]
    test = [record(rng, 'test') for _ in range(n_test)]
    out.mkdir(parents=True, exist_ok=True)
    for name, rs in (('reviews_train', train), ('reviews_test', test)):
        (out/f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rs))
    print(f"wrote {len(train)} training and {len(test)} held-out records to {out}")

if __name__ == '__main__': main()
