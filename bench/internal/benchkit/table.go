package benchkit

// MaxTableError bounds a failed run's error in a report table (the JSON
// report has all of it).
const MaxTableError = 600

// ShortenError cuts s to MaxTableError bytes for a report table and says
// where the rest is.
func ShortenError(s string) string {
	if len(s) <= MaxTableError {
		return s
	}
	return s[:MaxTableError] + "... (full error in the JSON)"
}
