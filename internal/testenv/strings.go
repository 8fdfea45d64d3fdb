package testenv

import (
	"regexp"
	"strings"
	"testing"
)

// MatchesRegexp checks that valid, a hand-written check, accepts exactly the strings spec
// matches: every string of up to 3 bytes over alphabet, and those strings repeated to lengths
// around limit (a length bound the check may have). A test's alphabet should hold, besides the
// accepted bytes, their neighbours in ASCII and a byte above 127.
func MatchesRegexp(t *testing.T, spec *regexp.Regexp, alphabet string, limit int, valid func(string) bool) {
	t.Helper()
	check := func(s string) {
		if got, want := valid(s), spec.MatchString(s); got != want {
			t.Errorf("%q: the check says %v, %s says %v", s, got, spec, want)
		}
	}
	words := []string{""}
	for n := 1; n <= 3; n++ {
		var next []string
		for _, w := range words {
			if len(w) == n-1 {
				for i := 0; i < len(alphabet); i++ {
					next = append(next, w+alphabet[i:i+1])
				}
			}
		}
		words = append(words, next...)
	}
	for _, w := range words {
		check(w)
		if w != "" && limit > 0 {
			for _, n := range []int{limit - 1, limit, limit + 1} {
				long := strings.Repeat(w, n/len(w)+1)[:n]
				check(long)
			}
		}
	}
}
