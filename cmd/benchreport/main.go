// Command benchreport turns `go test -bench` output into a readable table and appends one JSON
// object per figure to a results file, so that benchmark results can be tracked over time.
//
// Conventions (docs/development.md, "Benchmarks"): the group of a figure is its top-level
// benchmark's name without "Benchmark", lower-cased (BenchmarkJournal -> journal); its name is
// the sub-benchmark path (or "all"). Every metric on the line is a figure. A metric whose unit is
// "U;baseline=NAME" is not a figure of its own: it is the baseline of the figure with unit U on
// the same line, and gives it baseline_name NAME, baseline_value and ratio = value /
// baseline_value.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Figure is one line of results.jsonl.
type Figure struct {
	Group         string   `json:"group"`
	Name          string   `json:"name"`
	Value         float64  `json:"value"`
	Unit          string   `json:"unit"`
	BaselineName  string   `json:"baseline_name,omitempty"`
	BaselineValue *float64 `json:"baseline_value,omitempty"`
	Ratio         *float64 `json:"ratio,omitempty"`
	Git           string   `json:"git"`
	Time          string   `json:"time"`
}

func main() {
	out := flag.String("out", "bench/results.jsonl", "file to append JSON figures to")
	gitRev := flag.String("git", "", "git revision recorded with each figure")
	flag.Parse()
	figs, err := parse(os.Stdin, *gitRev, time.Now().UTC())
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	if len(figs) == 0 {
		fmt.Fprintln(os.Stderr, "benchreport: no benchmark results in the input")
		os.Exit(1)
	}
	printTable(os.Stdout, figs)
	f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(f)
	for _, fig := range figs {
		if err := enc.Encode(fig); err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
	}
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	fmt.Printf("\n%d figures appended to %s\n", len(figs), *out)
}

// parse reads benchmark result lines; other lines are ignored.
func parse(r io.Reader, gitRev string, now time.Time) ([]Figure, error) {
	var figs []Figure
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") || len(fields)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue // not a result line (e.g. "BenchmarkX --- FAIL")
		}
		group, name := split(fields[0])
		line := []Figure{}
		baselines := map[string]struct {
			name  string
			value float64
		}{}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: value %q: %w", fields[0], fields[i], err)
			}
			unit := fields[i+1]
			if u, base, ok := strings.Cut(unit, ";baseline="); ok {
				baselines[u] = struct {
					name  string
					value float64
				}{base, v}
				continue
			}
			line = append(line, Figure{Group: group, Name: name, Value: v, Unit: unit, Git: gitRev, Time: now.Format(time.RFC3339)})
		}
		for i := range line {
			if b, ok := baselines[line[i].Unit]; ok {
				bv := b.value
				line[i].BaselineName, line[i].BaselineValue = b.name, &bv
				if bv != 0 {
					ratio := line[i].Value / bv
					line[i].Ratio = &ratio
				}
			}
		}
		figs = append(figs, line...)
	}
	return figs, sc.Err()
}

// split turns "BenchmarkJournal/raw_insert-2" into ("journal", "raw_insert").
func split(bench string) (group, name string) {
	bench = strings.TrimPrefix(bench, "Benchmark")
	if i := strings.LastIndex(bench, "-"); i > 0 {
		if _, err := strconv.Atoi(bench[i+1:]); err == nil {
			bench = bench[:i] // the GOMAXPROCS suffix
		}
	}
	group, name, ok := strings.Cut(bench, "/")
	if !ok {
		name = "all"
	}
	return strings.ToLower(group), name
}

func printTable(w io.Writer, figs []Figure) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "group\tname\tvalue\tunit\tbaseline\tbaseline value\tratio\t")
	for _, f := range figs {
		base, bv, ratio := "", "", ""
		if f.BaselineValue != nil {
			base, bv = f.BaselineName, format(*f.BaselineValue)
		}
		if f.Ratio != nil {
			ratio = strconv.FormatFloat(*f.Ratio, 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Group, f.Name, format(f.Value), f.Unit, base, bv, ratio)
	}
	_ = tw.Flush()
}

// format shows large values without decimals and small ones (latencies in seconds) with four
// significant digits.
func format(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
}
