package api

import (
	"regexp"
	"testing"

	"github.com/musicd/musicd/internal/testenv"
)

func TestValidRequestID(t *testing.T) {
	testenv.MatchesRegexp(t, regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`), "azAZ09._:-`{@[/;,^ \xc3", 64, validRequestID)
}
