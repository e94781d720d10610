// Range header parsing of the model and kit downloads (RFC 9110 single byte ranges).
import test from "ava";
import {parseRange} from "../../ts/federated/download.js";

test("byte ranges: a-b, a-, -n, clamping, unsatisfiable and ignored forms", (t) => {
    const size = 1000;
    t.deepEqual(parseRange("bytes=0-0", size), {start: 0, end: 0});
    t.deepEqual(parseRange("bytes=0-999", size), {start: 0, end: 999});
    t.deepEqual(parseRange("bytes=10-2000", size), {start: 10, end: 999}, "an end past the file is clamped");
    t.deepEqual(parseRange("bytes=500-", size), {start: 500, end: 999});
    t.deepEqual(parseRange("bytes=-100", size), {start: 900, end: 999});
    t.deepEqual(parseRange("bytes=-5000", size), {start: 0, end: 999}, "a suffix longer than the file is the whole file");
    t.deepEqual(parseRange(" bytes=1-2 ", size), {start: 1, end: 2});
    t.is(parseRange("bytes=1000-", size), "unsatisfiable");
    t.is(parseRange("bytes=5000-6000", size), "unsatisfiable");
    t.is(parseRange("bytes=-0", size), "unsatisfiable");
    t.is(parseRange("bytes=0-", 0), "unsatisfiable", "no byte of an empty file can be sent");
    // ignored (the whole file is sent): absent, malformed, reversed, several ranges, other units
    t.is(parseRange(undefined, size), undefined);
    t.is(parseRange("bytes=-", size), undefined);
    t.is(parseRange("bytes=9-3", size), undefined);
    t.is(parseRange("bytes=0-1,5-6", size), undefined);
    t.is(parseRange("items=0-1", size), undefined);
    t.is(parseRange("bytes=a-b", size), undefined);
});
