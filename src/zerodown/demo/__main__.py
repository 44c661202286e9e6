from zerodown.demo.server import main

main()
