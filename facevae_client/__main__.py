from facevae_client.cli import main

main()
