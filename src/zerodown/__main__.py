from zerodown.cli import main

main()
