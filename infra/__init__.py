"""AWS deployment: the model tier on a SageMaker endpoint, stateless gateways on ECS Fargate behind an ALB.

`python -m infra plan|deploy|destroy|package`; see infra/README.md.
"""
