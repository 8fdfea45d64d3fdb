package state

import (
	"regexp"
	"testing"

	"github.com/musicd/musicd/internal/testenv"
)

func TestIdentChars(t *testing.T) {
	testenv.MatchesRegexp(t, regexp.MustCompile(`^[a-z][a-z0-9_]*$`), "az09_`{/:@[^-.A\xc3", 0, identChars)
}
