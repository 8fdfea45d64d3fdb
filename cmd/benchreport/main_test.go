package main

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	in := `goos: linux
pkg: github.com/musicd/musicd/journal
BenchmarkJournal/raw_insert-2         	   10000	    100000 ns/op	     10000 writes/s
BenchmarkJournal/raw_lwt_insert-2     	    2000	    500000 ns/op	      2000 writes/s	     10000 writes/s;baseline=raw_insert
BenchmarkAPI-8   	 100	 5 ns/op
--- FAIL: BenchmarkBroken
PASS
`
	figs, err := parse(strings.NewReader(in), "abc123", time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(figs) != 5 {
		t.Fatalf("%d figures, want 5: %+v", len(figs), figs)
	}
	lwt := figs[3]
	if lwt.Group != "journal" || lwt.Name != "raw_lwt_insert" || lwt.Unit != "writes/s" || lwt.Value != 2000 ||
		lwt.BaselineName != "raw_insert" || *lwt.BaselineValue != 10000 || *lwt.Ratio != 0.2 || lwt.Git != "abc123" {
		t.Errorf("baseline figure: %+v", lwt)
	}
	if figs[0].Ratio != nil || figs[0].BaselineName != "" {
		t.Errorf("plain figure has a baseline: %+v", figs[0])
	}
	if api := figs[4]; api.Group != "api" || api.Name != "all" || api.Unit != "ns/op" {
		t.Errorf("top-level benchmark: %+v", api)
	}
}

func TestFormat(t *testing.T) {
	for v, want := range map[float64]string{52241.4: "52241", 3.14159: "3.14", 0.0043091: "0.004309", 0: "0"} {
		if got := format(v); got != want {
			t.Errorf("format(%v) = %q, want %q", v, got, want)
		}
	}
}
