// Command hello is the package BuildStatic's test builds.
package main

func main() { println("hello") }
