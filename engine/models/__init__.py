"""Model families of the Table 1 experiments (CIFAR ResNets, VGG-BN, MobileNetV2, PointNet, DGCNN)."""
